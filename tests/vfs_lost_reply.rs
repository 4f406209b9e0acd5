//! An upload that lands while its reply is lost (or the daemon dies before recording it)
//! must not come back as a "conflict" with ourselves on the next attempt.

mod common;

use std::fs;
use std::io::Write;
use std::time::Duration;

use common::*;

#[test]
fn an_upload_whose_reply_was_lost_is_not_a_conflict() {
    let provider = memory_provider();
    let m = InProcessMount::new(provider.clone(), test_config(|c| c.upload_delay_secs = 0.3));
    fs::write(m.path("doc.txt"), b"version one").unwrap();
    assert!(m.drain(Duration::from_secs(10)));

    // The next upload reaches the server, but the client hears "connection reset".
    provider.lose_next_upload_reply();
    fs::write(m.path("doc.txt"), b"version two").unwrap();
    let vfs = m.vfs();
    m.rt.block_on(async {
        vfs.queue.expedite();
        // The attempt lands and its reply is lost: the executor looks at the remote,
        // finds the bytes it sent, and counts the upload as done (no retry needed).
        assert!(vfs.queue.wait_drained(Duration::from_secs(10)).await);
    });
    assert_eq!(provider.get_remote("/doc.txt").unwrap(), b"version two");
    assert!(m.vfs().conflicts().is_empty());
    // Then the file changes again and goes up over the revision that attempt made.
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(m.path("doc.txt"))
        .unwrap();
    f.write_all(b", and three").unwrap();
    drop(f);
    assert!(m.drain(Duration::from_secs(30)));

    assert_eq!(
        provider.get_remote("/doc.txt").unwrap(),
        b"version two, and three"
    );
    let names: Vec<String> = provider
        .paths()
        .into_iter()
        .filter(|p| !p.starts_with("/.cloudmount"))
        .collect();
    assert_eq!(names, vec!["/doc.txt".to_string()], "no conflict copy");
    assert!(m.vfs().conflicts().is_empty());
}
