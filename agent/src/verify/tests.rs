use flotilla_bundle::{KeySet, SigningKey, canonical};

use super::*;

const NOW: u64 = 1_800_000_000;

fn seal(key: &SigningKey, cluster: &str, sequence: u64, expires_at: u64) -> SignedBundle {
    key.seal(
        BundleMeta {
            cluster: cluster.into(),
            delivery: "apps".into(),
            revision: format!("rev{sequence}"),
            sequence,
            expires_at,
        },
        Bytes::from(canonical::encode_objects(&[serde_json::json!({
            "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}
        })])),
    )
}

fn verifier(key: &SigningKey) -> Verifier {
    Verifier::new("eu-1", TrustedKeys::new([key.public_key()]), 1)
}

#[test]
fn accepts_new_then_dedupes_then_refuses_older() {
    let key = SigningKey::generate().unwrap();
    let mut v = verifier(&key);
    assert!(matches!(
        v.verify(seal(&key, "eu-1", 5, NOW + 60), NOW).unwrap(),
        Verdict::New(_)
    ));
    assert!(matches!(
        v.verify(seal(&key, "eu-1", 5, NOW + 60), NOW).unwrap(),
        Verdict::Duplicate(_)
    ));
    let err = v.verify(seal(&key, "eu-1", 4, NOW + 60), NOW).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Replay {
                got: 4,
                held: 5,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(v.held().get("apps"), Some(&5));
}

#[test]
fn refusals_leave_the_held_sequence_alone() {
    let key = SigningKey::generate().unwrap();
    let stranger = SigningKey::generate().unwrap();
    let mut v = verifier(&key);
    let err = v.verify(seal(&key, "us-1", 9, NOW + 60), NOW).unwrap_err();
    assert!(matches!(err, Error::WrongAudience { .. }), "{err}");
    let err = v.verify(seal(&key, "eu-1", 9, NOW), NOW).unwrap_err();
    assert!(matches!(err, Error::Expired { .. }), "{err}");
    let err = v
        .verify(seal(&stranger, "eu-1", 9, NOW + 60), NOW)
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Seal { ref source, .. }
                if matches!(**source, flotilla_bundle::Error::UnknownKey { .. })
        ),
        "{err}"
    );
    let mut tampered = seal(&key, "eu-1", 9, NOW + 60);
    tampered.payload = Bytes::from_static(b"[]");
    let err = v.verify(tampered, NOW).unwrap_err();
    assert!(matches!(err, Error::Seal { .. }), "{err}");
    assert!(v.held().is_empty());
}

#[test]
fn key_rollover_through_a_signed_key_set() {
    let old = SigningKey::generate().unwrap();
    let new = SigningKey::generate().unwrap();
    let mut v = verifier(&old);
    // A set signed by an untrusted key is refused.
    let forged = new.sign_key_set(KeySet {
        sequence: 2,
        keys: vec![new.public_key()],
    });
    assert!(v.accept_key_set(forged).is_err());
    // Overlap: both keys trusted, bundles from either verify.
    let both = old.sign_key_set(KeySet {
        sequence: 2,
        keys: vec![old.public_key(), new.public_key()],
    });
    assert!(v.accept_key_set(both.clone()).unwrap());
    v.verify(seal(&old, "eu-1", 1, NOW + 60), NOW).unwrap();
    v.verify(seal(&new, "eu-1", 2, NOW + 60), NOW).unwrap();
    // Retire the old key; an older set is not re-adopted.
    let only_new = new.sign_key_set(KeySet {
        sequence: 3,
        keys: vec![new.public_key()],
    });
    assert!(v.accept_key_set(only_new).unwrap());
    assert!(v.accept_key_set(both).is_err(), "signed by a retired key");
    let stale = new.sign_key_set(KeySet {
        sequence: 2,
        keys: vec![old.public_key(), new.public_key()],
    });
    assert!(
        !v.accept_key_set(stale).unwrap(),
        "an older set is not re-adopted"
    );
    assert!(v.verify(seal(&old, "eu-1", 3, NOW + 60), NOW).is_err());
    v.verify(seal(&new, "eu-1", 3, NOW + 60), NOW).unwrap();
}

#[test]
fn stored_bundles_are_verified_again_without_sequence_or_expiry() {
    let key = SigningKey::generate().unwrap();
    let trusted = TrustedKeys::new([key.public_key()]);
    // Expired long ago and at a sequence the verifier holds: still the stored desired state.
    let bundle = seal(&key, "eu-1", 5, 10);
    let verified = verify_stored(bundle.clone(), "eu-1", &trusted).unwrap();
    assert_eq!(verified.to_signed(), bundle);
    assert_eq!(verified.objects().unwrap().len(), 1);

    let mut tampered = bundle.clone();
    tampered.payload = Bytes::from_static(b"[{\"kind\":\"Secret\"}]");
    let err = verify_stored(tampered, "eu-1", &trusted).unwrap_err();
    assert!(matches!(err, Error::Seal { .. }), "{err}");
    let err = verify_stored(bundle.clone(), "us-1", &trusted).unwrap_err();
    assert!(matches!(err, Error::WrongAudience { .. }), "{err}");
    let other = TrustedKeys::new([SigningKey::generate().unwrap().public_key()]);
    assert!(verify_stored(bundle, "eu-1", &other).is_err());
}
