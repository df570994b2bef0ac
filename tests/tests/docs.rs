//! The user documentation against the product: the getting-started guide's commands run
//! as written and do what it says, every link in the README and `docs/` leads somewhere,
//! nothing points outside the repository, and the example files are valid.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mesh_tests::binaries;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The Markdown files a user reads.
fn pages() -> Vec<PathBuf> {
    let mut pages = vec![root().join("README.md"), root().join("packaging/README.md")];
    for entry in std::fs::read_dir(root().join("docs")).expect("docs/") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "md") {
            pages.push(path);
        }
    }
    pages
}

/// The targets of `[text](target)` links.
fn links(text: &str) -> Vec<String> {
    text.split("](").skip(1).filter_map(|rest| rest.split(')').next()).map(str::to_owned).collect()
}

#[test]
fn every_link_in_the_readme_and_docs_resolves_inside_the_repository() {
    let pages = pages();
    assert!(pages.len() >= 8, "the docs are there: {pages:?}");
    let mut checked = 0;
    for page in &pages {
        let text = std::fs::read_to_string(page).expect("page");
        assert!(
            !text.contains("../shared") && !text.contains("DESIGN.md"),
            "{} points outside the repository",
            page.display()
        );
        for link in links(&text) {
            if link.starts_with("http://") || link.starts_with("https://") || link.starts_with('#') {
                continue;
            }
            let path = link.split('#').next().unwrap_or_default();
            let target = page.parent().expect("dir").join(path);
            assert!(target.exists(), "{}: the link {link} leads nowhere", page.display());
            let inside = target.canonicalize().expect("path").starts_with(root().canonicalize().expect("root"));
            assert!(inside, "{}: the link {link} leaves the repository", page.display());
            checked += 1;
        }
    }
    assert!(checked > 20, "only {checked} links checked");
}

#[test]
fn the_example_files_are_valid_as_they_are() {
    let examples = root().join("packaging/examples");
    let out = Command::new(&binaries().meshd)
        .args(["check-config", "--config"])
        .arg(examples.join("meshd.toml"))
        .output()
        .expect("meshd check-config");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let read = |f: &str| std::fs::read_to_string(examples.join(f)).expect("example");
    let service = mesh_proto::service::ServiceSpec::from_file("reviews.service.toml", &read("reviews.service.toml"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(service.name, "reviews");
    let route = mesh_proto::route::RouteSpec::from_file("reviews.route.toml", &read("reviews.route.toml"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((route.name.as_str(), route.http.len()), ("reviews", 2));
    assert!(route.http[1].retries.as_ref().and_then(|r| r.budget).is_some(), "the example shows the retry budget");
    let policy = mesh_proto::policy::PolicySpec::from_file("reviews.policy.toml", &read("reviews.policy.toml"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((policy.allow.len(), policy.deny.len(), policy.rate_limit.len()), (2, 1, 1));
}

/// The shell blocks of a Markdown page, in order.
fn shell_blocks(text: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        match (&mut current, line.trim_end()) {
            (None, "```sh") => current = Some(String::new()),
            (Some(_), "```") => blocks.extend(current.take()),
            (Some(block), l) => {
                block.push_str(l);
                block.push('\n');
            }
            (None, _) => {}
        }
    }
    blocks
}

/// The getting-started guide, from its second block on (the first clones and builds,
/// which the test command did already), run by bash with the built binaries on PATH.
/// Its addresses (127.0.0.21-23, virtual IPs in 127.79/16) are kept out of every test
/// block, so it runs beside the other tests.
#[test]
fn the_getting_started_guide_runs_as_written() {
    let guide = std::fs::read_to_string(root().join("docs/getting-started.md")).expect("guide");
    let blocks = shell_blocks(&guide);
    assert!(blocks.len() >= 6, "{} shell blocks", blocks.len());
    assert!(blocks[0].contains("cargo build"), "the first block builds: {}", blocks[0]);
    let tools = Command::new("sh")
        .args(["-c", "for t in dig curl python3; do command -v $t >/dev/null || exit 1; done"])
        .status()
        .expect("sh");
    assert!(tools.success(), "the guide uses dig, curl and python3: install bind9-dnsutils and curl (.ci/run does)");
    let dir = tempfile::tempdir().expect("tempdir");
    // Whatever happens, the guide's background processes end with the script.
    let script =
        format!("set -euo pipefail\ntrap 'kill $(jobs -p) 2>/dev/null || true' EXIT\n{}", blocks[1..].join("\n"));
    let bin = binaries().meshd.parent().expect("target dir").to_owned();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let mut child = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(dir.path())
        .env("PATH", path)
        .env_remove("MESHD_SOCKET")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("bash");
    let group = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid"));
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
            let _ = child.wait();
            panic!("the guide did not finish within 120 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = child.wait_with_output().expect("output");
    // Anything the guide left running (it should leave nothing) ends here.
    let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(status.success(), "the guide failed ({status}):\n{stdout}\n{stderr}");
    for said in [
        "vm-3  127.0.0.23:7946  alive",
        "registered web",
        "hello from vm-2",
        "every member (3) holds revision 1",
        "~ http[0].retries.attempts: 2 -> 3",
        "rolled back route web to revision 1@vm-1: now revision 3",
        "no problems in 1 route",
        "removed vm-3",
    ] {
        assert!(stdout.contains(said), "the guide's output has {said:?}:\n{stdout}\n{stderr}");
    }
}

/// The package installs man pages and shell completions from `packaging/deb/generated/`;
/// they are what the binaries print from their clap definitions, so they cannot drift.
/// `MESH_REGENERATE=1 cargo nextest run -p mesh-tests --test docs generated` rewrites them.
#[test]
fn the_packaged_man_pages_and_completions_are_what_the_binaries_print() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/deb/generated");
    let regenerate = std::env::var_os("MESH_REGENERATE").is_some();
    let bins = binaries();
    let mut stale = Vec::new();
    for (bin, name) in [(&bins.meshd, "meshd"), (&bins.meshctl, "meshctl")] {
        let outputs = [
            (vec!["man"], format!("{name}.1")),
            (vec!["completions", "bash"], format!("{name}.bash")),
            (vec!["completions", "zsh"], format!("_{name}")),
            (vec!["completions", "fish"], format!("{name}.fish")),
        ];
        for (args, file) in outputs {
            let out = Command::new(bin).args(&args).output().expect("run the binary");
            assert!(out.status.success(), "{name} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
            assert!(!out.stdout.is_empty(), "{name} {args:?} printed nothing");
            let path = dir.join(&file);
            if regenerate {
                std::fs::create_dir_all(&dir).expect("mkdir");
                std::fs::write(&path, &out.stdout).expect("write");
            } else if std::fs::read(&path).ok().as_deref() != Some(out.stdout.as_slice()) {
                stale.push(file);
            }
        }
    }
    assert!(
        stale.is_empty(),
        "stale in packaging/deb/generated: {stale:?}; run MESH_REGENERATE=1 cargo nextest run -p mesh-tests --test docs generated"
    );
}
