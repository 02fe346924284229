//! What a hostile change batch can make the decoder allocate, measured with a counting global
//! allocator. The decoder used to reserve one `Change` (~130 bytes) per input byte from a count
//! read off the wire, so a 1 MiB batch claiming a million changes reserved ~130 MB before it
//! found the batch truncated (a 32 MiB frame: gigabytes).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use changeset::decode_changes;

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
/// Tests in this file measure one at a time.
static MEASURING: Mutex<()> = Mutex::new(());

// SAFETY: every call is passed on to the system allocator unchanged; only sizes are counted.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(live, Ordering::Relaxed);
        // SAFETY: the caller's layout, as GlobalAlloc::alloc requires.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: `ptr` came from `alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The peak of bytes allocated (above what was live before) while decoding `input`.
fn peak_while_decoding(input: &[u8]) -> usize {
    let _one_at_a_time = MEASURING.lock().unwrap_or_else(|e| e.into_inner());
    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let result = decode_changes(input);
    let peak = PEAK.load(Ordering::Relaxed) - before;
    drop(result);
    peak
}

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A batch header: one name, one site, then a change count, padded to `len` bytes.
fn claiming(changes: u64, len: usize) -> Vec<u8> {
    let mut b = vec![1, 1, 5];
    b.extend_from_slice(b"todos");
    b.push(1);
    b.extend_from_slice(&[7; 16]);
    varint(changes, &mut b);
    b.resize(len, 0);
    b
}

#[test]
fn a_batch_claiming_more_changes_than_allowed_allocates_nothing_for_them() {
    let input = claiming((1 << 20) - 4096, 1 << 20);
    let peak = peak_while_decoding(&input);
    assert!(
        decode_changes(&input).is_err(),
        "a million changes is over the batch limit"
    );
    assert!(
        peak < 64 * 1024,
        "decoding reserved {peak} bytes for 1 MiB of input"
    );
}

#[test]
fn a_batch_claiming_more_changes_than_its_bytes_hold_allocates_nothing_for_them() {
    // 9,000 changes need at least 81,000 bytes; this batch has 20,000.
    let input = claiming(9_000, 20_000);
    assert!(decode_changes(&input).is_err());
    assert!(peak_while_decoding(&input) < 64 * 1024);
}

#[test]
fn the_largest_batch_allowed_stays_within_a_few_mib() {
    // 10,000 changes that all name the longest name twice: the worst copy amplification.
    let name = vec![b'n'; changeset::wire::MAX_NAME_BYTES];
    let mut b = vec![1, 1];
    varint(name.len() as u64, &mut b);
    b.extend_from_slice(&name);
    b.push(1);
    b.extend_from_slice(&[7; 16]);
    varint(10_000, &mut b);
    for _ in 0..10_000 {
        b.extend_from_slice(&[0, 0, 0, 0, 2, 2, 0, 2, 0]);
    }
    let changes = decode_changes(&b).expect("a valid batch");
    assert_eq!(changes.len(), 10_000);
    let peak = peak_while_decoding(&b);
    assert!(
        peak < 8 * 1024 * 1024,
        "{peak} bytes for {} bytes of input",
        b.len()
    );
}
