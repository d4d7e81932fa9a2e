use super::*;

const LEN: u64 = 64 * PAGE as u64;

/// A memfd of [`LEN`] bytes with pages 1 and 40 written, and page 7 written with zeros.
fn guest_ram() -> File {
    let m = new_memfd(LEN).unwrap();
    m.write_all_at(&[0xab; PAGE], PAGE as u64).unwrap();
    m.write_all_at(&[0; PAGE], 7 * PAGE as u64).unwrap();
    m.write_all_at(b"end", 40 * PAGE as u64 + 100).unwrap();
    m
}

fn contents(f: &File) -> Vec<u8> {
    let mut v = vec![0; LEN as usize];
    f.read_exact_at(&mut v, 0).unwrap();
    v
}

#[test]
fn saved_ram_is_sparse_and_loads_into_a_sealed_memfd() {
    let dir = tempfile::tempdir().unwrap();
    let m = guest_ram();
    let path = dir.path().join(RAM_FILE);
    // Two pages hold anything but zeros.
    assert_eq!(save(&m, &path).unwrap(), 2 * PAGE as u64);
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.len(), LEN);
    assert_eq!(meta.mode() & 0o777, 0o600);
    assert!(
        meta.blocks() * 512 < LEN / 4,
        "sparse: {} blocks",
        meta.blocks()
    );
    // Saving never overwrites.
    assert!(save(&m, &path).is_err());

    let loaded = load(&path, LEN).unwrap();
    assert_eq!(contents(&loaded), contents(&m));
    // Sealed: no write, no resize, whoever holds it.
    let e = loaded.write_all_at(b"x", 0).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EPERM), "{e}");
    assert!(loaded.set_len(LEN * 2).is_err());
    assert!(loaded.set_len(PAGE as u64).is_err());
    // Reopened read-write through /proc (as QEMU does), still sealed.
    let again = OpenOptions::new()
        .read(true)
        .write(true)
        .open(format!("/proc/self/fd/{}", loaded.as_raw_fd()))
        .unwrap();
    assert!(again.write_all_at(b"x", 0).is_err());
    check(&loaded, LEN, &identity(&loaded).unwrap()).unwrap();
    // A file of another size is not this VM's RAM.
    assert!(load(&path, LEN * 2).is_err());
}

#[test]
fn clones_get_the_keepers_memfd_and_a_foreign_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let at = dir.path().join("tpl");
    std::fs::create_dir(&at).unwrap();
    save(&guest_ram(), &at.join(RAM_FILE)).unwrap();

    // No keeper and none to start: loaded for this VM alone.
    let own = obtain(&at, LEN, || None).unwrap();
    assert_eq!(contents(&own), contents(&guest_ram()));

    // A keeper serving it: every clone gets the very same memfd.
    let kept = load(&at.join(RAM_FILE), LEN).unwrap();
    let listener = UnixListener::bind(at.join(SOCKET)).unwrap();
    std::fs::write(at.join(ID_FILE), identity(&kept).unwrap()).unwrap();
    let dir_file = File::open(&at).unwrap();
    let kept_id = identity(&kept).unwrap();
    let keeper = std::thread::spawn(move || serve(&kept, &listener, &dir_file, KEEPER_IDLE));
    for _ in 0..2 {
        let got = obtain(&at, LEN, || None).unwrap();
        assert_eq!(identity(&got).unwrap(), kept_id);
    }
    // One not named in ram.id (another memfd, however sealed) is not taken: this VM loads
    // its own instead.
    std::fs::write(at.join(ID_FILE), identity(&own).unwrap()).unwrap();
    let got = obtain(&at, LEN, || None).unwrap();
    assert_ne!(identity(&got).unwrap(), kept_id);
    assert_eq!(contents(&got), contents(&guest_ram()));

    // The template removed, the keeper leaves.
    std::fs::remove_dir_all(&at).unwrap();
    let started = Instant::now();
    keeper.join().unwrap().unwrap();
    assert!(started.elapsed() < KEEPER_CHECK * 3);
}

#[test]
fn an_idle_keeper_leaves() {
    let dir = tempfile::tempdir().unwrap();
    let m = guest_ram();
    let listener = UnixListener::bind(dir.path().join(SOCKET)).unwrap();
    let d = File::open(dir.path()).unwrap();
    let started = Instant::now();
    serve(&m, &listener, &d, Duration::from_millis(100)).unwrap();
    assert!(started.elapsed() < KEEPER_CHECK * 2);
}
