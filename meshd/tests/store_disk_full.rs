//! The store on a disk that fills up: a small tmpfs mounted by the test (CI runs as
//! root; without root this test fails, loudly, rather than skip).

use std::path::{Path, PathBuf};

use meshd::store::{Metrics, Store, StoreError};
use nix::mount::{mount, umount2, MntFlags, MsFlags};

/// A tmpfs of `size`, unmounted when dropped (even when the test fails).
struct Tmpfs {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("small");
        std::fs::create_dir(&path).expect("mount point");
        let options = format!("size={size},mode=0700");
        if let Err(e) = mount(Some("tmpfs"), &path, Some("tmpfs"), MsFlags::empty(), Some(options.as_str())) {
            panic!(
                "cannot mount a tmpfs at {} ({e}): this test needs root (CI runs as root). \
                 It is not skipped, because a disk-full test that does not run proves nothing.",
                path.display()
            );
        }
        Tmpfs { path, _dir: dir }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = umount2(&self.path, MntFlags::MNT_DETACH);
    }
}

fn open(path: &Path) -> Result<Store, StoreError> {
    Store::open(path, "a", std::sync::Arc::new(meshd::store::seal::Unsealed), Metrics::new(), |_| {})
}

#[test]
fn a_full_disk_refuses_writes_loses_nothing_acknowledged_and_keeps_serving_reads() {
    let fs = Tmpfs::mount("64m");
    // Room for the store to recover later: removed once the disk is full. A rebuild
    // needs room for a copy of the store beside it.
    let ballast = fs.path.join("ballast");
    std::fs::write(&ballast, vec![0u8; 40 << 20]).expect("ballast");
    let path = fs.path.join("store");
    let store = open(&path).expect("open on tmpfs");

    let value = |i: usize| format!("{i:08}").repeat(1024).into_bytes(); // 8 KiB
    let mut acked = Vec::new();
    let mut refusal = None;
    for i in 0..20_000 {
        match store.put(&format!("node/n/service/s{i}"), value(i)) {
            Ok(_) => acked.push(i),
            Err(e) => {
                refusal = Some(e);
                break;
            }
        }
    }
    let refusal = refusal.expect("a 64 MiB disk fills up before 160 MiB of writes");
    assert!(matches!(refusal, StoreError::Write { .. }), "{refusal}");
    assert!(refusal.is_retryable());
    assert!(refusal.to_string().contains(&path.display().to_string()), "{refusal}");
    assert!(acked.len() > 10, "some writes were stored before the disk filled: {}", acked.len());

    // Refused writes change nothing, and are refused at once (read-only); reads keep
    // working.
    let held = store.view().len();
    for i in 0..5 {
        let refused = store.put(&format!("refused/{i}"), value(i)).expect_err("the disk is still full");
        assert!(refused.to_string().contains("read-only"), "{refused}");
    }
    assert!(matches!(store.health(), meshd::store::Health::ReadOnly { .. }));
    assert!(store.recover().is_none(), "no room yet: nothing to try");
    let view = store.view();
    assert_eq!(view.len(), held);
    assert!(view.get("refused/0").is_none());
    for &i in &acked {
        assert_eq!(view.get(&format!("node/n/service/s{i}")), Some(&value(i)[..]), "key {i} readable");
    }

    // With room again the store becomes writable by itself (a retry is due 2 s after
    // the failure), and after a restart every acknowledged write is there.
    drop(view);
    std::fs::remove_file(&ballast).expect("free space");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        match store.recover() {
            Some(Ok(())) => break,
            Some(Err(e)) => panic!("the rebuild failed with room: {e}"),
            None => assert!(std::time::Instant::now() < deadline, "no rebuild tried: {}", store.health()),
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(store.health(), meshd::store::Health::Ok);
    store.put("after/recovery", b"taken".to_vec()).expect("a write after recovery");
    drop(store);
    let store = open(&path).expect("reopen");
    assert_eq!(store.view().get("after/recovery"), Some(&b"taken"[..]));
    let view = store.view();
    for &i in &acked {
        assert_eq!(view.get(&format!("node/n/service/s{i}")), Some(&value(i)[..]), "key {i} survived");
    }
    eprintln!("disk full after {} acknowledged 8 KiB writes; all {} present after reopen", acked.len(), acked.len());
}
