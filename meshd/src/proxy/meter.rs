//! A body that counts its bytes and says when it ended: how the proxy knows a request's
//! size and when its response was over (Istio's duration runs to the last byte), so
//! that each request is reported once, at its end.
//!
//! Must not: change the body: frames, size hints and the end pass through as they are.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};

/// Called once with the bytes that went through and whether the body ended normally
/// (false: it failed, or was dropped before its end, as when the client went away).
pub(super) type OnEnd = Box<dyn FnOnce(u64, bool) + Send + Sync>;

pub(super) struct Metered<B: Body> {
    inner: B,
    bytes: Arc<AtomicU64>,
    on_end: Option<OnEnd>,
}

impl<B: Body> Metered<B> {
    /// Counts into `bytes` (shared, so that the request's side can be read later).
    pub(super) fn counting(inner: B, bytes: Arc<AtomicU64>) -> Metered<B> {
        Metered { inner, bytes, on_end: None }
    }

    /// Counts, and calls `on_end` at the end.
    pub(super) fn reporting(inner: B, on_end: OnEnd) -> Metered<B> {
        Metered { inner, bytes: Arc::default(), on_end: Some(on_end) }
    }

    fn end(&mut self, ok: bool) {
        if let Some(f) = self.on_end.take() {
            f(self.bytes.load(Ordering::Relaxed), ok);
        }
    }
}

impl<B> Body for Metered<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
                }
                if self.inner.is_end_stream() {
                    self.end(true);
                }
            }
            Poll::Ready(Some(Err(_))) => self.end(false),
            Poll::Ready(None) => self.end(true),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B: Body> Drop for Metered<B> {
    fn drop(&mut self) {
        // A body that was empty from the start may never be polled: it ended all the same.
        let ended = self.inner.is_end_stream();
        self.end(ended);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};
    use std::sync::Mutex;

    type Seen = Arc<Mutex<Option<(u64, bool)>>>;

    fn recorder() -> (Seen, OnEnd) {
        let seen = Arc::new(Mutex::new(None));
        let s = seen.clone();
        (seen, Box::new(move |n, ok| *s.lock().expect("lock") = Some((n, ok))))
    }

    #[tokio::test]
    async fn a_body_read_to_its_end_reports_its_size_once() {
        let (seen, on_end) = recorder();
        let body = Metered::reporting(Full::new(Bytes::from_static(b"hello world")), on_end);
        let bytes = body.collect().await.expect("collect").to_bytes();
        assert_eq!(&bytes[..], b"hello world");
        assert_eq!(*seen.lock().expect("lock"), Some((11, true)));
    }

    /// Two frames, the second never asked for.
    struct TwoFrames(u8);

    impl Body for TwoFrames {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            self.0 += 1;
            Poll::Ready((self.0 <= 2).then(|| Ok(Frame::data(Bytes::from_static(b"abc")))))
        }
    }

    #[tokio::test]
    async fn a_body_dropped_midway_reports_a_failure() {
        let (seen, on_end) = recorder();
        let mut body = Metered::reporting(TwoFrames(0), on_end);
        let first = body.frame().await.expect("a frame").expect("ok");
        assert_eq!(first.data_ref().map(|d| d.len()), Some(3));
        drop(body);
        assert_eq!(*seen.lock().expect("lock"), Some((3, false)));
    }

    #[test]
    fn an_empty_body_never_polled_has_ended() {
        let (seen, on_end) = recorder();
        drop(Metered::reporting(http_body_util::Empty::<Bytes>::new(), on_end));
        assert_eq!(*seen.lock().expect("lock"), Some((0, true)));
    }

    #[tokio::test]
    async fn counting_shares_the_count() {
        let count = Arc::new(AtomicU64::new(0));
        let body = Metered::counting(Full::new(Bytes::from_static(b"12345")), count.clone());
        let _ = body.collect().await.expect("collect");
        assert_eq!(count.load(Ordering::Relaxed), 5);
    }
}
