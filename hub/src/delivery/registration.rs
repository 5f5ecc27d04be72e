//! `Registration`: bootstrap tokens and CSRs in, client certificates out.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use flotilla_proto::{PROTOCOL_VERSION, check_compatible, convert, pb};
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use super::{Hub, ca, stream::peer_cluster};
use crate::fleet::{self, BootstrapToken, ClusterState};

pub(super) struct Service {
    pub(super) hub: Hub,
}

impl Service {
    fn issue(&self, cluster: &str, csr_der: &[u8]) -> Result<Bytes, Status> {
        // Backdated a minute to tolerate clock skew between hub and agent.
        let not_before = SystemTime::now() - Duration::from_secs(60);
        let ttl = self.hub.inner.config.client_cert_ttl + Duration::from_secs(60);
        let cert = self
            .hub
            .inner
            .ca
            .issue_client(cluster, csr_der, not_before, ttl)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        Ok(Bytes::from(cert.to_vec()))
    }
}

fn token_status(e: fleet::Error) -> Status {
    match e {
        fleet::Error::NotAccepted { .. } | fleet::Error::UnknownCluster { .. } => {
            Status::permission_denied(e.to_string())
        }
        _ => Status::unauthenticated(e.to_string()),
    }
}

#[tonic::async_trait]
impl pb::registration_server::Registration for Service {
    async fn register(
        &self,
        request: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        let req = request.into_inner();
        check_compatible(req.protocol.as_ref())
            .map_err(|e| Status::failed_precondition(e.to_string()))?;
        // Check the CSR before spending the single-use token on it.
        ca::parse_csr("(registering)", &req.csr_der)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let token = BootstrapToken::from_secret(req.bootstrap_token);
        let cluster = self
            .hub
            .inner
            .registry
            .redeem_token(token.hash(), SystemTime::now())
            .await
            .map_err(|e| {
                warn!(error = %e, "registration refused");
                token_status(e)
            })?;
        let certificate_der = self.issue(&cluster, &req.csr_der)?;
        info!(cluster = %cluster, agent_version = %req.agent_version, "agent registered");
        Ok(Response::new(pb::RegisterResponse {
            protocol: Some(PROTOCOL_VERSION),
            cluster_id: cluster,
            certificate_der,
            ca_certificate_der: Bytes::from(self.hub.inner.ca.cert_der().to_vec()),
            key_set: Some(convert::key_set_to_pb(&self.hub.key_set())),
        }))
    }

    async fn renew(
        &self,
        request: Request<pb::RenewRequest>,
    ) -> Result<Response<pb::RenewResponse>, Status> {
        let cluster = peer_cluster(&request)?;
        match self.hub.inner.registry.state(&cluster).await {
            Some(ClusterState::Accepted) => {}
            state => {
                warn!(cluster = %cluster, ?state, "renewal refused");
                return Err(Status::permission_denied(format!(
                    "cluster {cluster} is not accepted"
                )));
            }
        }
        let certificate_der = self.issue(&cluster, &request.get_ref().csr_der)?;
        info!(cluster = %cluster, "client certificate renewed");
        Ok(Response::new(pb::RenewResponse {
            certificate_der,
            key_set: Some(convert::key_set_to_pb(&self.hub.key_set())),
        }))
    }
}
