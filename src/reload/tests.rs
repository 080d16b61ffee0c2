use std::os::unix::fs::symlink;
use std::time::Duration;

use super::{Reloads, Trigger};

/// Waits for the next reload within a deadline.
async fn next(reloads: &mut Reloads) -> Trigger {
    tokio::time::timeout(Duration::from_secs(10), reloads.next())
        .await
        .expect("a reload within 10 s")
}

#[tokio::test]
async fn an_edited_file_is_a_reload() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("relay.toml");
    std::fs::write(&file, "a = 1\n").unwrap();
    let mut reloads = Reloads::new(&file);
    // Written elsewhere, then renamed over it, as editors and `sed -i` do.
    let scratch = dir.path().join("relay.toml.new");
    std::fs::write(&scratch, "a = 2\n").unwrap();
    std::fs::rename(&scratch, &file).unwrap();
    assert_eq!(next(&mut reloads).await, Trigger::Changed);
    assert_eq!(reloads.seen, super::digest(&file));
}

#[tokio::test]
async fn a_configmap_symlink_swap_is_a_reload_and_the_same_content_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let mount = dir.path();
    // The kubelet's layout: FILE -> ..data/FILE, ..data -> ..TIMESTAMP.
    let version = |name: &str, text: &str| {
        std::fs::create_dir(mount.join(name)).unwrap();
        std::fs::write(mount.join(name).join("agent.toml"), text).unwrap();
        symlink(name, mount.join("..data_tmp")).unwrap();
        std::fs::rename(mount.join("..data_tmp"), mount.join("..data")).unwrap();
    };
    version("..2026_12_01_10_00_00.1", "a = 1\n");
    symlink("..data/agent.toml", mount.join("agent.toml")).unwrap();
    let file = mount.join("agent.toml");
    let mut reloads = Reloads::new(&file);
    // The same text swapped in: events, but no reload within a few settling periods.
    version("..2026_12_01_10_00_01.2", "a = 1\n");
    assert!(
        tokio::time::timeout(super::SETTLE * 4, reloads.next()).await.is_err(),
        "a swap to the same text was taken for a change"
    );
    // A new text: a reload, which reads it.
    version("..2026_12_01_10_00_02.3", "a = 3\n");
    assert_eq!(next(&mut reloads).await, Trigger::Changed);
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "a = 3\n");
    assert_eq!(reloads.seen, super::digest(&file));
}
