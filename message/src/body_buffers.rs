//! Lends the body column's value buffer to Arrow and gets it back when the batch is dropped.
//!
//! The body buffer is the one column buffer of a message batch that reaches megabytes: a batch
//! holds up to the source's `batch_max_bytes` of bodies. Allocated fresh for every batch, such a
//! buffer is its own memory mapping (glibc maps blocks of a MiB or more separately and unmaps them
//! on free), so every 4 KiB appended to it is a page fault and a page the kernel zeroes. With 1 % of
//! bodies at 200 KB that was two thirds of the engine's page faults (`benches/e2e/run.py --mixed`).
//!
//! A builder given [`BodyBuffers`] takes each batch's buffer from them and lends it to the batch's
//! body array; when the last array or slice referring to it is dropped, wherever that happens (a
//! sink's encoder, the router), the buffer is given back, and the next batch can append into pages
//! that are already resident. What to keep, and how much, is the implementation's decision.

use std::sync::Arc;

use arrow::buffer::Buffer;

/// Where a [`MessageBatchBuilder`](crate::MessageBatchBuilder) gets each batch's body buffer, and
/// where that buffer goes once no array refers to it.
pub trait BodyBuffers: Send + Sync + 'static {
    /// An empty buffer with room for at least `capacity` bytes.
    fn take(&self, capacity: usize) -> Vec<u8>;

    /// A buffer no array refers to any more (cleared, capacity kept): keep it or drop it.
    fn give_back(&self, buffer: Vec<u8>);
}

/// A buffer lent to an Arrow array: given back when the array's last reference drops.
struct Lent {
    values: Vec<u8>,
    buffers: Arc<dyn BodyBuffers>,
}

impl AsRef<[u8]> for Lent {
    fn as_ref(&self) -> &[u8] {
        &self.values
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        let mut values = std::mem::take(&mut self.values);
        values.clear();
        self.buffers.give_back(values);
    }
}

/// `values` as an Arrow buffer, without copying; the allocation goes back to `buffers` when the
/// Arrow buffer and every slice of it have been dropped.
pub(crate) fn lend(buffers: &Arc<dyn BodyBuffers>, values: Vec<u8>) -> Buffer {
    let lent = Lent {
        values,
        buffers: Arc::clone(buffers),
    };
    Buffer::from(bytes::Bytes::from_owner(lent))
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// Records what it is given back.
    #[derive(Default)]
    struct Recorder {
        given_back: Mutex<Vec<(usize, usize)>>,
    }

    impl BodyBuffers for Recorder {
        fn take(&self, capacity: usize) -> Vec<u8> {
            Vec::with_capacity(capacity)
        }

        fn give_back(&self, buffer: Vec<u8>) {
            let address = buffer.as_ptr() as usize;
            self.given_back
                .lock()
                .unwrap()
                .push((address, buffer.len()));
        }
    }

    #[test]
    fn a_buffer_is_given_back_cleared_when_its_last_slice_drops() {
        let recorder = Arc::new(Recorder::default());
        let buffers: Arc<dyn BodyBuffers> = Arc::clone(&recorder) as _;
        let mut values = buffers.take(1000);
        values.extend_from_slice(b"hello");
        let address = values.as_ptr() as usize;
        let buffer = lend(&buffers, values);
        let slice = buffer.slice(1);
        drop(buffer);
        assert!(
            recorder.given_back.lock().unwrap().is_empty(),
            "a slice still refers to it"
        );
        assert_eq!(slice.as_slice(), b"ello");
        drop(slice);
        assert_eq!(*recorder.given_back.lock().unwrap(), [(address, 0)]);
    }
}
