//! The slice of the Kubernetes OpenAPI schema that strategic merge needs: which lists are merged
//! by key, and with which keys.
//!
//! kustomize v5.5 merges with the schema of Kubernetes v1.21.2 it embeds; the table in
//! `schema_table.rs` is generated from that schema by `render/scripts/gen_merge_schema.py` and
//! keeps only the types from which a merged list is reachable. Everything else a built-in type
//! contains is [`Ty::Opaque`]: known to the schema, but merged like a schemaless value.

use super::schema_table::{KINDS, TYPES};

/// The type of a field, as far as merging cares.
#[derive(Debug, Clone, Copy)]
pub(super) enum Ty {
    /// Known to the schema, with no merged list below it.
    Opaque,
    /// An object type: index into [`TYPES`].
    Obj(u16),
    /// A list.
    List(&'static ListDef),
    /// A map whose values all have this type (the generator emits it when a map's values lead
    /// to merged lists; the v1.21.2 schema has none).
    #[allow(dead_code)]
    Map(&'static Ty),
}

/// A list type.
#[derive(Debug)]
pub(super) struct ListDef {
    /// Whether `x-kubernetes-patch-strategy` contains `merge`.
    pub merge: bool,
    /// `x-kubernetes-list-map-keys`, else `x-kubernetes-patch-merge-key`; empty for a list of
    /// primitives merged as a set.
    pub keys: &'static [&'static str],
    /// The element type.
    pub item: Ty,
}

/// An object type and its fields that lead to merged lists (sorted by name).
#[derive(Debug)]
pub(super) struct TypeDef {
    /// The OpenAPI definition name, for debugging.
    #[allow(dead_code)]
    pub name: &'static str,
    /// Fields, sorted by name.
    pub fields: &'static [(&'static str, Ty)],
    /// The type of `additionalProperties`, when they lead to merged lists.
    pub additional: Option<Ty>,
}

/// A schema position while walking: `None` when the schema knows nothing (custom resources,
/// unknown fields).
pub(super) type Schema = Option<Ty>;

/// The root schema of a built-in kind, if the embedded schema knows it.
pub(super) fn for_kind(api_version: &str, kind: &str) -> Schema {
    KINDS
        .binary_search_by(|(a, k, _)| (*a, *k).cmp(&(api_version, kind)))
        .ok()
        .map(|i| KINDS[i].2)
}

/// The schema of a field of an object.
pub(super) fn field(schema: Schema, name: &str) -> Schema {
    match schema? {
        Ty::Opaque => Some(Ty::Opaque),
        Ty::Obj(i) => {
            let def = &TYPES[usize::from(i)];
            match def.fields.binary_search_by(|(f, _)| (*f).cmp(name)) {
                Ok(j) => Some(def.fields[j].1),
                Err(_) => Some(def.additional.unwrap_or(Ty::Opaque)),
            }
        }
        Ty::List(_) => None,
        Ty::Map(t) => Some(*t),
    }
}

/// The schema of the elements of a list.
pub(super) fn elements(schema: Schema) -> Schema {
    match schema? {
        Ty::Opaque => Some(Ty::Opaque),
        Ty::List(l) => Some(l.item),
        Ty::Obj(_) | Ty::Map(_) => None,
    }
}

/// The merge keys of a list the schema says to merge (possibly empty: a set of primitives), or
/// `None` for a list that a patch replaces.
pub(super) fn merge_keys(schema: Schema) -> Option<&'static [&'static str]> {
    match schema? {
        Ty::List(l) if l.merge => Some(l.keys),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_sorted_for_binary_search() {
        assert!(
            KINDS
                .windows(2)
                .all(|w| (w[0].0, w[0].1) < (w[1].0, w[1].1))
        );
        for def in TYPES {
            assert!(
                def.fields.windows(2).all(|w| w[0].0 < w[1].0),
                "{}",
                def.name
            );
        }
    }

    #[test]
    fn pod_template_containers_merge_by_name_and_ports_by_port_and_protocol() {
        let deployment = for_kind("apps/v1", "Deployment");
        let pod_spec = ["spec", "template", "spec"]
            .iter()
            .fold(deployment, |s, f| field(s, f));
        let containers = field(pod_spec, "containers");
        assert_eq!(merge_keys(containers), Some(&["name"][..]));
        let ports = field(elements(containers), "ports");
        assert_eq!(merge_keys(ports), Some(&["containerPort", "protocol"][..]));
        assert_eq!(merge_keys(field(pod_spec, "tolerations")), None);
        let finalizers = field(field(deployment, "metadata"), "finalizers");
        assert_eq!(merge_keys(finalizers), Some(&[][..]));
        assert!(for_kind("example.com/v1", "Foo").is_none());
    }
}
