use super::*;

fn args(repo: &str) -> BootstrapArgs {
    use clap::Parser as _;
    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: BootstrapArgs,
    }
    Cli::parse_from(["flotilla", "--repo", repo, "--path", "clusters/mgmt"]).args
}

fn plan_with(files: &[(&str, &str)]) -> Plan {
    Plan {
        cluster: "mgmt".into(),
        namespace: "flotilla-system".into(),
        path: "clusters/mgmt".into(),
        files: files
            .iter()
            .map(|(p, t)| File {
                path: (*p).into(),
                text: (*t).into(),
            })
            .collect(),
        secret_ref: None,
    }
}

/// The files of `branch` in the bare repository at `path`, as (path, text).
fn files_at(path: &Path, branch: &str) -> Vec<(String, String)> {
    let repo = Repository::open_bare(path).unwrap();
    let commit = repo
        .find_reference(&format!("refs/heads/{branch}"))
        .unwrap()
        .peel_to_commit()
        .unwrap();
    let mut out = Vec::new();
    commit
        .tree()
        .unwrap()
        .walk(git2::TreeWalkMode::PreOrder, |dir, entry| {
            if let Some(blob) = entry.to_object(&repo).ok().and_then(|o| o.into_blob().ok()) {
                out.push((
                    format!("{dir}{}", entry.name().unwrap()),
                    String::from_utf8_lossy(blob.content()).into_owned(),
                ));
            }
            git2::TreeWalkResult::Ok
        })
        .unwrap();
    out
}

#[test]
fn paths_are_normalised_and_escapes_refused() {
    assert_eq!(normalise_path("./clusters/mgmt/").unwrap(), "clusters/mgmt");
    assert_eq!(normalise_path("clusters//mgmt").unwrap(), "clusters/mgmt");
    for bad in ["/clusters/mgmt", "clusters/../..", ".", ""] {
        let e = normalise_path(bad).unwrap_err().to_string();
        assert!(e.contains("--path"), "{bad:?}: {e}");
    }
}

#[test]
fn authors_parse_and_bad_ones_are_named() {
    let s = author("Jane Ops <jane@example.com>").unwrap();
    assert_eq!(s.name().unwrap(), "Jane Ops");
    assert_eq!(s.email().unwrap(), "jane@example.com");
    let e = author("jane").err().unwrap().to_string();
    assert!(e.contains("--author") && e.contains("Name <email>"), "{e}");
}

#[test]
fn sync_manifests_are_a_gitsource_and_a_delivery_selecting_the_cluster() {
    let mut a = args("https://git.example.com/fleet.git");
    a.branch = "prod".into();
    let text = sync_yaml(
        &a,
        "flotilla-system",
        "mgmt",
        "clusters/mgmt",
        Some(&("creds".into(), true)),
    )
    .unwrap();
    let objects = parse_objects(&File {
        path: "sync.yaml".into(),
        text,
    })
    .unwrap();
    assert_eq!(objects.len(), 2);
    let source: crate::api::GitSource = serde_json::from_value(objects[0].clone()).unwrap();
    assert_eq!(source.spec.url, "https://git.example.com/fleet.git");
    assert_eq!(
        source.spec.reference.unwrap().branch.as_deref(),
        Some("prod")
    );
    assert_eq!(source.spec.secret_ref.unwrap().name, "creds");
    let delivery: Delivery = serde_json::from_value(objects[1].clone()).unwrap();
    assert_eq!(delivery.spec.source_ref.name, "flotilla-system");
    assert_eq!(delivery.spec.path, "clusters/mgmt");
    assert!(delivery.spec.prune);
    assert_eq!(
        delivery
            .spec
            .cluster_selector
            .match_labels
            .get(CLUSTER_LABEL),
        Some(&"mgmt".to_owned())
    );
}

#[test]
fn publishing_commits_once_then_finds_the_branch_up_to_date() {
    let dir = tempfile::tempdir().unwrap();
    let remote = dir.path().join("fleet.git");
    Repository::init_bare(&remote).unwrap();
    let a = args(remote.to_str().unwrap());
    let plan = plan_with(&[
        ("clusters/mgmt/flotilla-system/hub.yaml", "kind: A\n"),
        ("clusters/mgmt/flotilla-system/sync.yaml", "kind: B\n"),
    ]);

    // An empty repository gets the branch.
    let first = publish(&a, &plan, &PushAuth::None).unwrap();
    let Published::Committed(id) = &first else {
        panic!("expected a commit, got {first:?}");
    };
    let files = files_at(&remote, "main");
    assert_eq!(
        files,
        vec![
            (
                "clusters/mgmt/flotilla-system/hub.yaml".to_owned(),
                "kind: A\n".to_owned()
            ),
            (
                "clusters/mgmt/flotilla-system/sync.yaml".to_owned(),
                "kind: B\n".to_owned()
            ),
        ]
    );

    // Same files: no second commit.
    let again = publish(&a, &plan, &PushAuth::None).unwrap();
    assert!(
        matches!(&again, Published::Unchanged(same) if same == id),
        "{again:?}"
    );
}

#[test]
fn publishing_replaces_only_its_own_directory() {
    let dir = tempfile::tempdir().unwrap();
    let remote = dir.path().join("fleet.git");
    Repository::init_bare(&remote).unwrap();
    let a = args(remote.to_str().unwrap());
    publish(
        &a,
        &plan_with(&[
            ("clusters/mgmt/flotilla-system/old.yaml", "kind: Old\n"),
            ("clusters/mgmt/apps/mine.yaml", "kind: Mine\n"),
            ("README.md", "hello\n"),
        ]),
        &PushAuth::None,
    )
    .unwrap();

    let next = publish(
        &a,
        &plan_with(&[("clusters/mgmt/flotilla-system/hub.yaml", "kind: A\n")]),
        &PushAuth::None,
    )
    .unwrap();
    assert!(matches!(next, Published::Committed(_)), "{next:?}");
    let paths: Vec<String> = files_at(&remote, "main")
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    assert_eq!(
        paths,
        [
            "README.md",
            "clusters/mgmt/apps/mine.yaml",
            "clusters/mgmt/flotilla-system/hub.yaml"
        ]
    );
    let repo = Repository::open_bare(&remote).unwrap();
    let head = repo
        .find_reference("refs/heads/main")
        .unwrap()
        .peel_to_commit()
        .unwrap();
    assert_eq!(
        head.parent_count(),
        1,
        "the second commit builds on the first"
    );
}

#[test]
fn a_missing_remote_is_named_without_its_password() {
    let a = args("https://ops:hunter2@127.0.0.1:9/fleet.git");
    let e = publish(&a, &plan_with(&[]), &PushAuth::None)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("fetching https://ops:***@127.0.0.1:9/fleet.git"),
        "{e}"
    );
    assert!(!e.contains("hunter2"), "{e}");
}

#[test]
fn the_embedded_charts_are_the_repository_s() {
    for chart in ["flotilla-hub", "flotilla-agent"] {
        let file = format!("{chart}/Chart.yaml");
        let embedded = CHARTS
            .get_file(&file)
            .unwrap_or_else(|| panic!("{file} is not embedded"));
        let on_disk = std::fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../charts")
                .join(&file),
        )
        .unwrap();
        assert_eq!(embedded.contents(), on_disk.as_slice(), "{file}");
    }
}

#[test]
fn a_missing_local_repository_is_named() {
    let a = args("/nonexistent/fleet.git");
    let e = publish(&a, &plan_with(&[]), &PushAuth::None)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("--repo /nonexistent/fleet.git: no such directory"),
        "{e}"
    );
}
