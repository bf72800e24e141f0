//! What a virtio request costs in heap allocations on the thread that serves it (the
//! vCPU thread with `--no-ioeventfd`): the devices' own buffers are allocated once, so
//! the count per request must not depend on the request's size. What remains is
//! virtio-queue's `Reader`/`Writer`, which collect a chain's descriptors in a list.
//! No KVM: the requests are laid out in guest memory the way a driver would.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use hushvm::devices::virtio::block::Block;
use hushvm::devices::virtio::driver::DriverQueue;
use hushvm::devices::virtio::rng::Rng;
use hushvm::devices::virtio::VirtioDevice;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

thread_local! {
    /// (allocations, bytes allocated) on this thread.
    static ALLOCATIONS: Cell<(u64, u64)> = const { Cell::new((0, 0)) };
}

/// Counts this thread's allocations, then lets the system allocator do them.
struct Counting;

// SAFETY: every call is forwarded unchanged to the system allocator; counting touches
// only a thread-local cell, which does not allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|count| {
            let (calls, bytes) = count.get();
            count.set((calls + 1, bytes + layout.size() as u64));
        });
        // SAFETY: the caller's contract for `alloc` is passed on as it is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract for `dealloc` is passed on as it is.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Allocations and bytes allocated since `before`.
fn since(before: (u64, u64)) -> (u64, u64) {
    let (calls, bytes) = ALLOCATIONS.with(Cell::get);
    (calls - before.0, bytes - before.1)
}

const QUEUE: u64 = 0x1_0000;
const HEADER: u64 = 0x2_0000;
const DATA: u64 = 0x10_0000;
const STATUS: u64 = 0x3_0000;

/// Allocations and bytes for `requests` block reads of `bytes` each, served one at a
/// time.
fn block_read_allocations(requests: u16, bytes: u32) -> (u64, u64) {
    let memory = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
    let device = Block::new(vec![0u8; 1 << 20], false, "alloc");
    let mut driver = DriverQueue::new(QUEUE, 256);
    let mut queue = driver.device_queue(256);
    memory
        .write_slice(&[0u8; 16], GuestAddress(HEADER))
        .unwrap();
    let before = ALLOCATIONS.with(Cell::get);
    for _ in 0..requests {
        driver.add_chain(
            &memory,
            &[(HEADER, 16, false), (DATA, bytes, true), (STATUS, 1, true)],
        );
        device.process_queue(0, &mut queue, &memory).unwrap();
    }
    since(before)
}

#[test]
fn a_block_request_allocates_the_same_whatever_its_size() {
    let small = block_read_allocations(100, 512);
    let large = block_read_allocations(100, 64 * 1024);
    assert_eq!(small, large, "the data buffer is the device's own, reused");
    let (calls, bytes) = small;
    // virtio-queue's Reader, Writer and the status split: a few small lists each.
    assert!(calls <= 100 * 8, "{calls} allocations for 100 requests");
    assert!(bytes <= 100 * 1024, "{bytes} bytes for 100 requests");
    println!(
        "block: {} allocations, {} bytes per request",
        calls / 100,
        bytes / 100
    );
}

#[test]
fn an_entropy_request_allocates_the_same_whatever_its_size() {
    let per = |bytes: u32| {
        let memory = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
        let device = Rng::new(std::io::repeat(7));
        let mut driver = DriverQueue::new(QUEUE, 64);
        let mut queue = driver.device_queue(64);
        let before = ALLOCATIONS.with(Cell::get);
        for _ in 0..50 {
            driver.add_chain(&memory, &[(DATA, bytes, true)]);
            device.process_queue(0, &mut queue, &memory).unwrap();
        }
        since(before)
    };
    assert_eq!(per(16), per(64 * 1024));
}
