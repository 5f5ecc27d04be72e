//! Name-reference fix-ups: after prefixes, suffixes, namespaces and hash suffixes changed
//! names, every field that refers to an object by name (a Deployment's ConfigMap volume, a
//! RoleBinding's roleRef and subjects, an Ingress backend, ...) is updated to the new name.
//!
//! A referrer field holding `old` is pointed at the one candidate that was once called `old`,
//! is of the referenced type, is visible from the referrer's namespace and, when several
//! remain, went through the same prefixes and suffixes — Kustomize's rules.

use std::collections::HashMap;
use std::sync::OnceLock;

use serde_json::Value;

use super::fieldspec::{FieldSpec, Leaf, WalkError, is_cluster_scoped, walk};
use super::resource::{Gvk, ResId, Resource, str_at};

/// For each referenced type, the fields (by referrer type) that hold its name.
/// `@ Kind group version` starts a referenced type; indented rows are
/// `ReferrerKind group version path` (`-` = any).
const BACK_REFERENCES: &str = r"
@ Deployment - -
  HorizontalPodAutoscaler - - spec/scaleTargetRef/name
@ ReplicationController - -
  HorizontalPodAutoscaler - - spec/scaleTargetRef/name
@ ReplicaSet - -
  HorizontalPodAutoscaler - - spec/scaleTargetRef/name
@ StatefulSet - -
  HorizontalPodAutoscaler - - spec/scaleTargetRef/name
@ ConfigMap - v1
  Pod - v1 spec/volumes/configMap/name
  Pod - v1 spec/containers/env/valueFrom/configMapKeyRef/name
  Pod - v1 spec/initContainers/env/valueFrom/configMapKeyRef/name
  Pod - v1 spec/containers/envFrom/configMapRef/name
  Pod - v1 spec/initContainers/envFrom/configMapRef/name
  Pod - v1 spec/volumes/projected/sources/configMap/name
  PodTemplate - - template/spec/volumes/configMap/name
  PodTemplate - - template/spec/containers/env/valueFrom/configMapKeyRef/name
  PodTemplate - - template/spec/initContainers/env/valueFrom/configMapKeyRef/name
  PodTemplate - - template/spec/containers/envFrom/configMapRef/name
  PodTemplate - - template/spec/initContainers/envFrom/configMapRef/name
  PodTemplate - - template/spec/volumes/projected/sources/configMap/name
  Deployment - - spec/template/spec/volumes/configMap/name
  Deployment - - spec/template/spec/containers/env/valueFrom/configMapKeyRef/name
  Deployment - - spec/template/spec/initContainers/env/valueFrom/configMapKeyRef/name
  Deployment - - spec/template/spec/containers/envFrom/configMapRef/name
  Deployment - - spec/template/spec/initContainers/envFrom/configMapRef/name
  Deployment - - spec/template/spec/volumes/projected/sources/configMap/name
  ReplicaSet - - spec/template/spec/volumes/configMap/name
  ReplicaSet - - spec/template/spec/containers/env/valueFrom/configMapKeyRef/name
  ReplicaSet - - spec/template/spec/initContainers/env/valueFrom/configMapKeyRef/name
  ReplicaSet - - spec/template/spec/containers/envFrom/configMapRef/name
  ReplicaSet - - spec/template/spec/initContainers/envFrom/configMapRef/name
  ReplicaSet - - spec/template/spec/volumes/projected/sources/configMap/name
  DaemonSet - - spec/template/spec/volumes/configMap/name
  DaemonSet - - spec/template/spec/containers/env/valueFrom/configMapKeyRef/name
  DaemonSet - - spec/template/spec/initContainers/env/valueFrom/configMapKeyRef/name
  DaemonSet - - spec/template/spec/containers/envFrom/configMapRef/name
  DaemonSet - - spec/template/spec/initContainers/envFrom/configMapRef/name
  DaemonSet - - spec/template/spec/volumes/projected/sources/configMap/name
  StatefulSet - - spec/template/spec/volumes/configMap/name
  StatefulSet - - spec/template/spec/containers/env/valueFrom/configMapKeyRef/name
  StatefulSet - - spec/template/spec/initContainers/env/valueFrom/configMapKeyRef/name
  StatefulSet - - spec/template/spec/containers/envFrom/configMapRef/name
  StatefulSet - - spec/template/spec/initContainers/envFrom/configMapRef/name
  StatefulSet - - spec/template/spec/volumes/projected/sources/configMap/name
  Job - - spec/template/spec/volumes/configMap/name
  Job - - spec/template/spec/containers/env/valueFrom/configMapKeyRef/name
  Job - - spec/template/spec/initContainers/env/valueFrom/configMapKeyRef/name
  Job - - spec/template/spec/containers/envFrom/configMapRef/name
  Job - - spec/template/spec/initContainers/envFrom/configMapRef/name
  Job - - spec/template/spec/volumes/projected/sources/configMap/name
  CronJob - - spec/jobTemplate/spec/template/spec/volumes/configMap/name
  CronJob - - spec/jobTemplate/spec/template/spec/volumes/projected/sources/configMap/name
  CronJob - - spec/jobTemplate/spec/template/spec/containers/env/valueFrom/configMapKeyRef/name
  CronJob - - spec/jobTemplate/spec/template/spec/initContainers/env/valueFrom/configMapKeyRef/name
  CronJob - - spec/jobTemplate/spec/template/spec/containers/envFrom/configMapRef/name
  CronJob - - spec/jobTemplate/spec/template/spec/initContainers/envFrom/configMapRef/name
  Node - - spec/configSource/configMap
  Role - - rules/resourceNames
  ClusterRole - - rules/resourceNames
  Ingress - - metadata/annotations/nginx.ingress.kubernetes.io\/fastcgi-params-configmap
@ Secret - v1
  Pod - v1 spec/volumes/secret/secretName
  Pod - v1 spec/containers/env/valueFrom/secretKeyRef/name
  Pod - v1 spec/initContainers/env/valueFrom/secretKeyRef/name
  Pod - v1 spec/containers/envFrom/secretRef/name
  Pod - v1 spec/initContainers/envFrom/secretRef/name
  Pod - v1 spec/imagePullSecrets/name
  Pod - v1 spec/volumes/projected/sources/secret/name
  PodTemplate - - template/spec/volumes/secret/secretName
  PodTemplate - - template/spec/containers/env/valueFrom/secretKeyRef/name
  PodTemplate - - template/spec/initContainers/env/valueFrom/secretKeyRef/name
  PodTemplate - - template/spec/containers/envFrom/secretRef/name
  PodTemplate - - template/spec/initContainers/envFrom/secretRef/name
  PodTemplate - - template/spec/imagePullSecrets/name
  PodTemplate - - template/spec/volumes/projected/sources/secret/name
  Deployment - - spec/template/spec/volumes/secret/secretName
  Deployment - - spec/template/spec/containers/env/valueFrom/secretKeyRef/name
  Deployment - - spec/template/spec/initContainers/env/valueFrom/secretKeyRef/name
  Deployment - - spec/template/spec/containers/envFrom/secretRef/name
  Deployment - - spec/template/spec/initContainers/envFrom/secretRef/name
  Deployment - - spec/template/spec/imagePullSecrets/name
  Deployment - - spec/template/spec/volumes/projected/sources/secret/name
  ReplicaSet - - spec/template/spec/volumes/secret/secretName
  ReplicaSet - - spec/template/spec/containers/env/valueFrom/secretKeyRef/name
  ReplicaSet - - spec/template/spec/initContainers/env/valueFrom/secretKeyRef/name
  ReplicaSet - - spec/template/spec/containers/envFrom/secretRef/name
  ReplicaSet - - spec/template/spec/initContainers/envFrom/secretRef/name
  ReplicaSet - - spec/template/spec/imagePullSecrets/name
  ReplicaSet - - spec/template/spec/volumes/projected/sources/secret/name
  DaemonSet - - spec/template/spec/volumes/secret/secretName
  DaemonSet - - spec/template/spec/containers/env/valueFrom/secretKeyRef/name
  DaemonSet - - spec/template/spec/initContainers/env/valueFrom/secretKeyRef/name
  DaemonSet - - spec/template/spec/containers/envFrom/secretRef/name
  DaemonSet - - spec/template/spec/initContainers/envFrom/secretRef/name
  DaemonSet - - spec/template/spec/imagePullSecrets/name
  DaemonSet - - spec/template/spec/volumes/projected/sources/secret/name
  StatefulSet - - spec/template/spec/volumes/secret/secretName
  StatefulSet - - spec/template/spec/containers/env/valueFrom/secretKeyRef/name
  StatefulSet - - spec/template/spec/initContainers/env/valueFrom/secretKeyRef/name
  StatefulSet - - spec/template/spec/containers/envFrom/secretRef/name
  StatefulSet - - spec/template/spec/initContainers/envFrom/secretRef/name
  StatefulSet - - spec/template/spec/imagePullSecrets/name
  StatefulSet - - spec/template/spec/volumes/projected/sources/secret/name
  Job - - spec/template/spec/volumes/secret/secretName
  Job - - spec/template/spec/containers/env/valueFrom/secretKeyRef/name
  Job - - spec/template/spec/initContainers/env/valueFrom/secretKeyRef/name
  Job - - spec/template/spec/containers/envFrom/secretRef/name
  Job - - spec/template/spec/initContainers/envFrom/secretRef/name
  Job - - spec/template/spec/imagePullSecrets/name
  Job - - spec/template/spec/volumes/projected/sources/secret/name
  CronJob - - spec/jobTemplate/spec/template/spec/volumes/secret/secretName
  CronJob - - spec/jobTemplate/spec/template/spec/volumes/projected/sources/secret/name
  CronJob - - spec/jobTemplate/spec/template/spec/containers/env/valueFrom/secretKeyRef/name
  CronJob - - spec/jobTemplate/spec/template/spec/initContainers/env/valueFrom/secretKeyRef/name
  CronJob - - spec/jobTemplate/spec/template/spec/containers/envFrom/secretRef/name
  CronJob - - spec/jobTemplate/spec/template/spec/initContainers/envFrom/secretRef/name
  CronJob - - spec/jobTemplate/spec/template/spec/imagePullSecrets/name
  Ingress - - spec/tls/secretName
  Ingress - - metadata/annotations/ingress.kubernetes.io\/auth-secret
  Ingress - - metadata/annotations/nginx.ingress.kubernetes.io\/auth-secret
  Ingress - - metadata/annotations/nginx.ingress.kubernetes.io\/auth-tls-secret
  Ingress - - spec/tls/secretName
  ServiceAccount - - imagePullSecrets/name
  StorageClass - - parameters/secretName
  StorageClass - - parameters/adminSecretName
  StorageClass - - parameters/userSecretName
  StorageClass - - parameters/secretRef
  Role - - rules/resourceNames
  ClusterRole - - rules/resourceNames
  Service serving.knative.dev v1 spec/template/spec/containers/env/valueFrom/secretKeyRef/name
  PersistentVolume - - spec/azureFile/secretName
@ Service - v1
  StatefulSet apps - spec/serviceName
  Ingress - - spec/rules/http/paths/backend/serviceName
  Ingress - - spec/backend/serviceName
  Ingress - - spec/rules/http/paths/backend/service/name
  Ingress - - spec/defaultBackend/service/name
  APIService apiregistration.k8s.io - spec/service/name
  ValidatingWebhookConfiguration admissionregistration.k8s.io - webhooks/clientConfig/service
  MutatingWebhookConfiguration admissionregistration.k8s.io - webhooks/clientConfig/service
@ Role rbac.authorization.k8s.io -
  RoleBinding rbac.authorization.k8s.io - roleRef/name
@ ClusterRole rbac.authorization.k8s.io -
  RoleBinding rbac.authorization.k8s.io - roleRef/name
  ClusterRoleBinding rbac.authorization.k8s.io - roleRef/name
@ ServiceAccount - v1
  RoleBinding rbac.authorization.k8s.io - subjects
  ClusterRoleBinding rbac.authorization.k8s.io - subjects
  Pod - - spec/serviceAccountName
  StatefulSet - - spec/template/spec/serviceAccountName
  Deployment - - spec/template/spec/serviceAccountName
  ReplicationController - - spec/template/spec/serviceAccountName
  CronJob - - spec/jobTemplate/spec/template/spec/serviceAccountName
  Job - - spec/template/spec/serviceAccountName
  DaemonSet - - spec/template/spec/serviceAccountName
@ PersistentVolumeClaim - v1
  Pod - - spec/volumes/persistentVolumeClaim/claimName
  StatefulSet - - spec/template/spec/volumes/persistentVolumeClaim/claimName
  Deployment - - spec/template/spec/volumes/persistentVolumeClaim/claimName
  ReplicationController - - spec/template/spec/volumes/persistentVolumeClaim/claimName
  CronJob - - spec/jobTemplate/spec/template/spec/volumes/persistentVolumeClaim/claimName
  Job - - spec/template/spec/volumes/persistentVolumeClaim/claimName
  DaemonSet - - spec/template/spec/volumes/persistentVolumeClaim/claimName
@ PersistentVolume - v1
  PersistentVolumeClaim - - spec/volumeName
  ClusterRole - - rules/resourceNames
@ StorageClass storage.k8s.io v1
  PersistentVolume - - spec/storageClassName
  PersistentVolumeClaim - - spec/storageClassName
  StatefulSet - - spec/volumeClaimTemplates/spec/storageClassName
@ PriorityClass scheduling.k8s.io v1
  Pod - - spec/priorityClassName
  StatefulSet - - spec/template/spec/priorityClassName
  Deployment - - spec/template/spec/priorityClassName
  ReplicationController - - spec/template/spec/priorityClassName
  CronJob - - spec/jobTemplate/spec/template/spec/priorityClassName
  Job - - spec/template/spec/priorityClassName
  DaemonSet - - spec/template/spec/priorityClassName
@ IngressClass networking.k8s.io/v1 v1
  Ingress - - spec/ingressClassName
@ ValidatingAdmissionPolicy admissionregistration.k8s.io -
  ValidatingAdmissionPolicyBinding admissionregistration.k8s.io - spec/policyName
";

struct BackRef {
    target: Gvk,
    /// Referrer type selector and field spec.
    referrers: Vec<(Gvk, FieldSpec)>,
}

/// `(index of a BackRef, index in its referrers)` pairs, in table order.
type FieldRefs = std::sync::Arc<[(usize, usize)]>;

/// The fields of [`back_refs`] whose referrer selector selects `gvk`. Memoised per type.
fn referrer_fields(gvk: &Gvk) -> FieldRefs {
    use std::sync::{Mutex, PoisonError};
    static MEMO: OnceLock<Mutex<HashMap<Gvk, FieldRefs>>> = OnceLock::new();
    let memo = MEMO.get_or_init(Default::default);
    if let Some(v) = memo.lock().unwrap_or_else(PoisonError::into_inner).get(gvk) {
        return v.clone();
    }
    let fields: FieldRefs = back_refs()
        .iter()
        .enumerate()
        .flat_map(|(bi, br)| {
            br.referrers
                .iter()
                .enumerate()
                .filter(|(_, (sel, _))| gvk.is_selected(sel))
                .map(move |(si, _)| (bi, si))
        })
        .collect();
    let mut m = memo.lock().unwrap_or_else(PoisonError::into_inner);
    if m.len() > 4096 {
        m.clear();
    }
    m.insert(gvk.clone(), fields.clone());
    fields
}

fn back_refs() -> &'static [BackRef] {
    static TABLE: OnceLock<Vec<BackRef>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let dash = |s: &str| {
            if s == "-" {
                String::new()
            } else {
                s.to_string()
            }
        };
        let mut out: Vec<BackRef> = Vec::new();
        for line in BACK_REFERENCES.lines().filter(|l| !l.trim().is_empty()) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols[0] == "@" {
                out.push(BackRef {
                    target: Gvk {
                        kind: dash(cols[1]),
                        group: dash(cols[2]),
                        version: dash(cols[3]),
                    },
                    referrers: Vec::new(),
                });
            } else if let Some(last) = out.last_mut() {
                let spec = FieldSpec::new(
                    dash(cols[0]),
                    dash(cols[1]),
                    dash(cols[2]),
                    cols[3].to_string(),
                    false,
                );
                let sel = Gvk {
                    group: spec.group.clone(),
                    version: spec.version.clone(),
                    kind: spec.kind.clone(),
                };
                last.referrers.push((sel, spec));
            }
        }
        out
    })
}

/// What the fix-up needs to know about each resource, taken before any field changes.
struct Info {
    cur: ResId,
    prev: Vec<ResId>,
    org_namespace: String,
    prefixes: Vec<String>,
    suffixes: Vec<String>,
}

fn same_ending(a: &[String], b: &[String]) -> bool {
    let (short, long) = if a.len() > b.len() { (b, a) } else { (a, b) };
    let diff = long.len() - short.len();
    if short.is_empty() {
        return diff == 0;
    }
    short.iter().enumerate().all(|(i, s)| &long[i + diff] == s)
}

fn prefixes_suffixes_equal(c: &Info, r: &Info, allow_empty: bool) -> bool {
    if allow_empty {
        let pe = c.prefixes.is_empty() || r.prefixes.is_empty();
        let se = c.suffixes.is_empty() || r.suffixes.is_empty();
        (pe || same_ending(&c.prefixes, &r.prefixes))
            && (se || same_ending(&c.suffixes, &r.suffixes))
    } else {
        same_ending(&c.prefixes, &r.prefixes) && same_ending(&c.suffixes, &r.suffixes)
    }
}

struct Ctx<'a> {
    infos: &'a [Info],
    referrer: usize,
    candidates: &'a [usize],
    target: &'a Gvk,
    role_ref: Option<Gvk>,
}

impl Ctx<'_> {
    fn select(
        &self,
        old: &str,
        pool: &[usize],
        by_namespace_too: bool,
    ) -> Result<Option<usize>, String> {
        let r = &self.infos[self.referrer];
        let mut c: Vec<usize> = pool
            .iter()
            .copied()
            .filter(|&i| {
                let inf = &self.infos[i];
                inf.prev.iter().any(|p| p.name == old)
                    && inf.prev.iter().any(|p| p.gvk.is_selected(self.target))
                    && self
                        .role_ref
                        .as_ref()
                        .is_none_or(|g| inf.prev.iter().any(|p| p.gvk.is_selected(g)))
                    && (is_cluster_scoped(&r.cur.gvk)
                        || is_cluster_scoped(&inf.cur.gvk)
                        || inf.cur.gvk.kind == "ServiceAccount"
                        || inf.cur.effective_namespace() == r.cur.effective_namespace())
            })
            .collect();
        if c.len() == 1 {
            return Ok(Some(c[0]));
        }
        c.retain(|&i| prefixes_suffixes_equal(&self.infos[i], r, true));
        if c.len() > 1 {
            c.retain(|&i| prefixes_suffixes_equal(&self.infos[i], r, false));
        }
        match c.len() {
            0 => Ok(None),
            1 => Ok(Some(c[0])),
            _ => {
                let first = &self.infos[c[0]].cur;
                let identical = c.iter().all(|&i| {
                    let o = &self.infos[i].cur;
                    o.name == first.name && (!by_namespace_too || o.namespace == first.namespace)
                });
                if identical {
                    Ok(Some(c[0]))
                } else {
                    let ids: Vec<String> = c.iter().map(|&i| self.infos[i].cur.display()).collect();
                    Err(format!(
                        "{} refers to {old:?}, which could be any of: {}",
                        r.cur.display(),
                        ids.join(", ")
                    ))
                }
            }
        }
    }

    fn set_scalar(&self, v: &mut Value) -> Result<(), String> {
        let Value::String(old) = v else {
            return Ok(());
        };
        if let Some(i) = self.select(old, self.candidates, false)? {
            let name = &self.infos[i].cur.name;
            if name != old {
                *v = Value::String(name.clone());
            }
        }
        Ok(())
    }

    fn set_mapping(&self, v: &mut Value) -> Result<(), String> {
        let Value::Object(m) = v else {
            return Ok(());
        };
        let Some(old) = m.get("name").and_then(Value::as_str).map(str::to_string) else {
            return Err(format!(
                "{}: a name reference has no `name` field",
                self.infos[self.referrer].cur.display()
            ));
        };
        let pool: Vec<usize> = match m.get("namespace") {
            None => self.candidates.to_vec(),
            Some(ns) => {
                let ns = ns.as_str().unwrap_or("");
                let by_org: Vec<usize> = self
                    .candidates
                    .iter()
                    .copied()
                    .filter(|&i| self.infos[i].org_namespace == ns)
                    .collect();
                if by_org.is_empty() {
                    self.candidates
                        .iter()
                        .copied()
                        .filter(|&i| self.infos[i].cur.namespace == ns)
                        .collect()
                } else {
                    by_org
                }
            }
        };
        let Some(i) = self.select(&old, &pool, true)? else {
            return Ok(());
        };
        let cur = &self.infos[i].cur;
        if cur.name == old && cur.namespace.is_empty() {
            return Ok(());
        }
        m.insert("name".into(), Value::String(cur.name.clone()));
        if !cur.namespace.is_empty() {
            m.insert("namespace".into(), Value::String(cur.namespace.clone()));
        }
        Ok(())
    }

    fn set(&self, v: &mut Value) -> Result<(), String> {
        match v {
            Value::Null => Ok(()),
            Value::Object(_) => self.set_mapping(v),
            Value::Array(items) => {
                for item in items {
                    if item.is_object() {
                        self.set_mapping(item)?;
                    } else {
                        self.set_scalar(item)?;
                    }
                }
                Ok(())
            }
            _ => self.set_scalar(v),
        }
    }
}

/// Namespaces of the ServiceAccount subjects of a RoleBinding (they may live elsewhere).
fn role_binding_namespaces(r: &Resource) -> Vec<String> {
    if r.kind() != "RoleBinding" {
        return Vec::new();
    }
    match r.obj.get("subjects") {
        Some(Value::Array(subjects)) => subjects
            .iter()
            .filter(|s| str_at(s, &["kind"]) == "ServiceAccount")
            .map(|s| str_at(s, &["namespace"]).to_string())
            .filter(|ns| !ns.is_empty())
            .collect(),
        _ => Vec::new(),
    }
}

/// Rewrites every name reference in `ra` to the referenced object's final name.
pub(crate) fn fix(ra: &mut [Resource]) -> Result<(), String> {
    let infos: Vec<Info> = ra
        .iter()
        .map(|r| Info {
            cur: r.cur_id(),
            prev: r.prev.clone(),
            org_namespace: r.org_id().namespace,
            prefixes: r.prefixes.clone(),
            suffixes: r.suffixes.clone(),
        })
        .collect();
    // Only objects that were renamed (or re-namespaced) can be referred to by an old name.
    if infos.iter().all(|i| i.prev.is_empty()) {
        return Ok(());
    }
    // Candidates by namespace, so finding what a referrer can see is not a scan of everything.
    let mut cluster: Vec<usize> = Vec::new();
    let mut by_effective_ns: HashMap<String, Vec<usize>> = HashMap::new();
    let mut by_ns: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, inf) in infos.iter().enumerate() {
        if is_cluster_scoped(&inf.cur.gvk) {
            cluster.push(i);
        } else {
            by_effective_ns
                .entry(inf.cur.effective_namespace().to_string())
                .or_default()
                .push(i);
        }
        by_ns.entry(inf.cur.namespace.as_str()).or_default().push(i);
    }
    let all: Vec<usize> = (0..ra.len()).collect();
    for ri in 0..ra.len() {
        let org = ra[ri].org_id();
        let referrer_cur = &infos[ri].cur;
        let fields = referrer_fields(&org.gvk);
        if fields.is_empty() {
            continue;
        }
        let candidates: Vec<usize> = if is_cluster_scoped(&referrer_cur.gvk) {
            all.clone()
        } else {
            let mut v = cluster.clone();
            if let Some(same) = by_effective_ns.get(referrer_cur.effective_namespace()) {
                v.extend(same);
            }
            for ns in role_binding_namespaces(&ra[ri]) {
                if let Some(more) = by_ns.get(ns.as_str()) {
                    v.extend(more);
                }
            }
            v.sort_unstable();
            v.dedup();
            v
        };
        for &(bi, si) in fields.iter() {
            let br = &back_refs()[bi];
            let spec = &br.referrers[si].1;
            {
                let path = &spec.parts;
                let role_ref = if spec.path.ends_with("roleRef/name") {
                    let rr = ra[ri].obj.get("roleRef");
                    match (
                        rr.and_then(|r| r.get("apiGroup")).and_then(Value::as_str),
                        rr.and_then(|r| r.get("kind")).and_then(Value::as_str),
                    ) {
                        (Some(g), Some(k)) => Some(Gvk {
                            group: g.to_string(),
                            version: String::new(),
                            kind: k.to_string(),
                        }),
                        _ => None,
                    }
                } else {
                    None
                };
                let ctx = Ctx {
                    infos: &infos,
                    referrer: ri,
                    candidates: &candidates,
                    target: &br.target,
                    role_ref,
                };
                let mut err = None;
                let mut set = |v: &mut Value| {
                    ctx.set(v).map_err(|message| {
                        err = Some(message.clone());
                        WalkError { message }
                    })
                };
                if let Err(e) = walk(&mut ra[ri].obj, path, false, Leaf::None, &mut set) {
                    return Err(err.unwrap_or(format!(
                        "{}: field {}: {}",
                        infos[ri].cur.display(),
                        spec.path,
                        e.message
                    )));
                }
            }
        }
    }
    Ok(())
}
