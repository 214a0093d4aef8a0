//! Request framing checked on the wire, before hyper parses it (wire-contract §4.8).
//!
//! Why this sits below hyper: hyper 1.x quietly drops a `Content-Length` that comes with
//! `Transfer-Encoding`, drops a second `Content-Length` equal to the first, and httparse
//! accepts bare LF line endings, so by the time a request reaches the service these shapes
//! can no longer be seen. [`FramingGuard`] wraps the accepted connection (TCP or TLS) and
//! looks at every HTTP/1.x request head as its bytes go by. It reads straight into the
//! reader's buffer and scans only the bytes it just read, so it holds no buffer of its own
//! and allocates nothing until it refuses. To find the next head on a keep-alive
//! connection it skips each body as the head frames it: N bytes for `Content-Length: N`,
//! the chunk-size lines, data, trailers and final empty line for `chunked`.
//!
//! Refused, with 400 `invalid_token` "malformed request framing": a bare LF or bare CR
//! anywhere in a head, an obsolete line fold, `Content-Length` more than once (or a list,
//! or not a number), `Content-Length` with `Transfer-Encoding`, a `Transfer-Encoding` that
//! appears more than once or does not end in (a single) `chunked`, and a bad chunk-size
//! line or chunk terminator. A head longer than the header bound is refused with 431.
//! Everything else (method, target, version, header syntax) is left to hyper.
//!
//! A refusal is a complete response written here (`connection: close`, an `x-request-id`
//! and the catalog body), after which the reader sees end of file and the socket is shut
//! down. Bytes of the refused head are never handed on past the refused byte, and a head is
//! never handed on complete before it is checked: hyper cannot finish parsing it.
//!
//! When to write the refusal: only while hyper is not writing a response, or our bytes
//! would land inside it. hyper reads the next head only when it is idle, or, while it
//! answers, to notice a closed connection (and then only while its own buffer is empty).
//! So a refusal found in the first read of a head's bytes is not answered at once: the
//! bytes before the refused one (at least one byte) are handed on, which stops those
//! probing reads, and the answer is written on the next read, which hyper makes only once
//! it parses that head. A refusal inside a body is answered only if hyper has written
//! nothing since that request's head; otherwise the reader just sees end of file and hyper
//! closes the connection after its response. In both cases the answer also waits for
//! hyper's last flush to complete.
//!
//! Deadlines ([`FramingGuard::with_deadlines`]): a head must arrive whole within
//! `READ_HEADER_TIMEOUT` of its first byte, and a connection with neither reads nor writes
//! for `IDLE_TIMEOUT` while no head is in progress is closed (the reader sees end of file).
//! hyper's own header-read timer starts while a keep-alive connection is merely idle, which
//! would close every idle connection after the header bound; this one starts at the head's
//! first byte.
//!
//! A connection that starts with the HTTP/2 preface (h2c prior knowledge), or whose TLS
//! handshake chose h2, passes through untouched. Upgraded connections are not supported by
//! the gateway, so every byte after a head is framed as HTTP/1.x.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll, Waker},
    time::Duration,
};

use tokio::time::Instant;

use control_model::{Denial, ErrorCode};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

#[cfg(test)]
mod tests;

/// The client connection preface of HTTP/2 (RFC 9113 §3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Bytes of chunk extensions allowed in one body; hyper refuses at the same count.
const CHUNK_EXTENSIONS_LIMIT: usize = 16 * 1024;
/// At most this many bytes already sent by the client are read and dropped after a
/// refusal, so that closing does not reset the connection before the answer is read.
const DRAIN_LIMIT: usize = 64 * 1024;

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// 400: a forbidden framing shape.
    Framing,
    /// 431: the head is longer than the header bound.
    HeaderTooLarge,
}

impl Refusal {
    /// The catalog outcome.
    pub(crate) fn denial(self) -> Denial {
        match self {
            Refusal::Framing => Denial::bad_request("malformed request framing"),
            Refusal::HeaderTooLarge => Denial::new(
                431,
                ErrorCode::InvalidToken,
                "request header block too large",
            ),
        }
    }

    /// The complete HTTP/1.1 response, with a fresh request id.
    fn response(self) -> Vec<u8> {
        let request_id = uuid::Uuid::now_v7().to_string();
        let denial = self.denial();
        let body = denial.body(&request_id).to_string();
        let reason = match self {
            Refusal::Framing => "Bad Request",
            Refusal::HeaderTooLarge => "Request Header Fields Too Large",
        };
        format!(
            "HTTP/1.1 {} {reason}\r\ncontent-type: application/json\r\nconnection: close\r\n\
             x-request-id: {request_id}\r\ncontent-length: {}\r\n\r\n{body}",
            denial.status,
            body.len()
        )
        .into_bytes()
    }
}

/// What the guard does with the connection.
#[derive(Debug)]
enum Mode {
    /// HTTP/1.x: every byte read is scanned.
    Inspect,
    /// HTTP/2: nothing is looked at.
    Passthrough,
    /// A refusal waits for a moment when hyper is not writing. `in_head`: found in a head
    /// (else in a body).
    Deferred { refusal: Refusal, in_head: bool },
    /// The answer is being written, then flushed, then the socket shut down.
    Refusing {
        response: Vec<u8>,
        written: usize,
        flushed: bool,
    },
    /// A refusal could not be answered (hyper had begun a response): reads see end of file,
    /// writes pass.
    ReadClosed,
    /// Answered and shut down: reads see end of file, writes fail.
    Closed,
}

/// The accepted connection's IO with the framing checks in front of the reader (see the
/// module docs). Generic over the TCP and the TLS stream.
#[derive(Debug)]
pub(crate) struct FramingGuard<IO> {
    io: IO,
    mode: Mode,
    scanner: Scanner,
    /// Bytes of the HTTP/2 preface matched so far; `None` once the connection cannot start
    /// with it.
    preface: Option<usize>,
    /// The reader's last flush completed and it has written nothing since.
    write_idle: bool,
    /// The reader has written something since the last head was handed on complete.
    written_since_head: bool,
    /// A read waiting for `write_idle`.
    read_waker: Option<Waker>,
    /// The head and idle deadlines, when set.
    clock: Option<Clock>,
}

/// The deadlines of an HTTP/1.x connection. The sleep is re-armed lazily: activity only
/// records its time, and an expired sleep whose deadline moved is set again.
#[derive(Debug)]
struct Clock {
    header: Duration,
    idle: Duration,
    /// The first byte of the head in progress, if any.
    head_started: Option<Instant>,
    /// The last read or write.
    last_activity: Instant,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl Clock {
    fn new(header: Duration, idle: Duration) -> Self {
        let now = Instant::now();
        Self {
            header,
            idle,
            head_started: None,
            last_activity: now,
            sleep: Box::pin(tokio::time::sleep_until(now + idle)),
        }
    }

    /// The deadline that applies now.
    fn deadline(&self) -> Instant {
        match self.head_started {
            Some(started) => started + self.header,
            None => self.last_activity + self.idle,
        }
    }

    /// Whether the deadline has passed; otherwise the sleep is armed for it and wakes `cx`.
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        loop {
            let deadline = self.deadline();
            if self.sleep.deadline() != deadline {
                self.sleep.as_mut().reset(deadline);
            }
            if self.sleep.as_mut().poll(cx).is_pending() {
                return false;
            }
            if self.deadline() <= Instant::now() {
                return true;
            }
        }
    }
}

impl<IO> FramingGuard<IO> {
    /// Wraps `io`. `max_header_bytes`: the header bound (a longer head is answered 431).
    /// `h2`: TLS negotiated HTTP/2, so nothing is inspected.
    pub(crate) fn new(io: IO, max_header_bytes: usize, h2: bool) -> Self {
        Self {
            io,
            mode: if h2 { Mode::Passthrough } else { Mode::Inspect },
            scanner: Scanner::new(max_header_bytes),
            preface: Some(0),
            write_idle: true,
            written_since_head: false,
            read_waker: None,
            clock: None,
        }
    }

    /// Adds the head deadline (`header`, from a head's first byte) and the idle deadline
    /// (`idle`, without reads or writes while no head is in progress).
    #[must_use]
    pub(crate) fn with_deadlines(mut self, header: Duration, idle: Duration) -> Self {
        self.clock = Some(Clock::new(header, idle));
        self
    }

    /// Records a read or write, and whether a head is now in progress.
    fn touch(&mut self) {
        if let Some(clock) = self.clock.as_mut() {
            let now = Instant::now();
            clock.last_activity = now;
            match (&self.scanner.message, clock.head_started) {
                (Message::Head(head), None) if head.len > 0 => clock.head_started = Some(now),
                (Message::Head(head), Some(_)) if head.len > 0 => {}
                _ => clock.head_started = None,
            }
        }
    }

    /// Whether the bytes read so far are the HTTP/2 preface, now complete; `read` are the
    /// bytes just read.
    fn completes_preface(&mut self, read: &[u8]) -> bool {
        let Some(matched) = self.preface else {
            return false;
        };
        let rest = H2_PREFACE.get(matched..).unwrap_or_default();
        let n = read.len().min(rest.len());
        if read.get(..n) != rest.get(..n) {
            self.preface = None;
            return false;
        }
        if matched + n == H2_PREFACE.len() {
            self.preface = None;
            return true;
        }
        self.preface = Some(matched + n);
        false
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> FramingGuard<IO> {
    /// One read in [`Mode::Inspect`].
    fn poll_read_inspected(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let start = buf.filled().len();
        std::task::ready!(Pin::new(&mut self.io).poll_read(cx, buf))?;
        let read = buf.filled().get(start..).unwrap_or_default();
        if read.is_empty() {
            return Poll::Ready(Ok(()));
        }
        if self.completes_preface(read) {
            self.mode = Mode::Passthrough;
            return Poll::Ready(Ok(()));
        }
        self.scanner.begin_read();
        let scanned = self.scanner.scan(read);
        if scanned.completed_head {
            self.written_since_head = false;
        }
        let Some(stop) = scanned.stop else {
            return Poll::Ready(Ok(()));
        };
        tracing::debug!(refusal = ?stop.refusal, in_head = stop.in_head, "request framing refused");
        self.mode = Mode::Deferred {
            refusal: stop.refusal,
            in_head: stop.in_head,
        };
        if stop.seen {
            // The reader already holds part of this head or body, so it is parsing it now.
            buf.set_filled(start);
            return self.poll_deferred(cx);
        }
        // The reader may be answering an earlier request: hand on the clean bytes before the
        // refused one (one byte at least, which cannot complete a head) and answer on the
        // next read.
        let keep = if stop.in_head {
            stop.at.max(stop.head_from + 1)
        } else {
            stop.at
        };
        buf.set_filled(start + keep);
        Poll::Ready(Ok(()))
    }

    /// A read in [`Mode::Deferred`]: the reader is parsing the refused head or body.
    fn poll_deferred(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Mode::Deferred { refusal, in_head } = self.mode else {
            return Poll::Ready(Ok(()));
        };
        if !in_head && self.written_since_head {
            // hyper has begun answering this request; an answer of ours would land inside
            // its response. End of file makes hyper close after it.
            self.mode = Mode::ReadClosed;
            return Poll::Ready(Ok(()));
        }
        if !self.write_idle {
            self.read_waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        self.mode = Mode::Refusing {
            response: refusal.response(),
            written: 0,
            flushed: false,
        };
        std::task::ready!(self.poll_refusing(cx));
        Poll::Ready(Ok(()))
    }

    /// Writes, flushes and shuts down the answer, then drops what the client already sent.
    /// Ends in [`Mode::Closed`] whatever happens: an I/O error here ends the connection.
    fn poll_refusing(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Self { io, mode, .. } = self;
        let Mode::Refusing {
            response,
            written,
            flushed,
        } = mode
        else {
            return Poll::Ready(());
        };
        let mut io = Pin::new(io);
        while let Some(rest) = response.get(*written..).filter(|rest| !rest.is_empty()) {
            match io.as_mut().poll_write(cx, rest) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(n)) if n > 0 => *written += n,
                Poll::Ready(Ok(_)) => return finish(mode, "refusal write returned zero"),
                Poll::Ready(Err(error)) => {
                    tracing::debug!(%error, "refusal write failed");
                    return finish(mode, "refusal write failed");
                }
            }
        }
        if !*flushed {
            match std::task::ready!(io.as_mut().poll_flush(cx)) {
                Ok(()) => *flushed = true,
                Err(error) => {
                    tracing::debug!(%error, "refusal flush failed");
                    return finish(mode, "refusal flush failed");
                }
            }
        }
        if let Err(error) = std::task::ready!(io.as_mut().poll_shutdown(cx)) {
            tracing::debug!(%error, "shutdown after refusal failed");
        }
        // Best effort: read what is already there so that closing sends FIN, not RST, before
        // the client has read the answer.
        let mut scratch = [0_u8; 4096];
        let mut drained = 0;
        while drained < DRAIN_LIMIT {
            let mut sink = ReadBuf::new(&mut scratch);
            match io.as_mut().poll_read(cx, &mut sink) {
                Poll::Ready(Ok(())) if !sink.filled().is_empty() => drained += sink.filled().len(),
                _ => break,
            }
        }
        finish(mode, "refusal answered")
    }
}

/// Ends a refusal.
fn finish(mode: &mut Mode, how: &'static str) -> Poll<()> {
    tracing::trace!(how, "framing guard closed");
    *mode = Mode::Closed;
    Poll::Ready(())
}

/// The error a write sees once the connection was answered and shut down.
fn closed() -> io::Error {
    io::Error::new(
        io::ErrorKind::BrokenPipe,
        "connection closed after a framing refusal",
    )
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for FramingGuard<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match this.mode {
            Mode::Passthrough => Pin::new(&mut this.io).poll_read(cx, buf),
            Mode::Inspect => {
                let filled = buf.filled().len();
                match this.poll_read_inspected(cx, buf) {
                    Poll::Pending => {
                        if this.clock.as_mut().is_some_and(|clock| clock.expired(cx)) {
                            // Out of time: the reader sees end of file and closes.
                            tracing::debug!("connection closed at its head or idle deadline");
                            this.mode = Mode::ReadClosed;
                            return Poll::Ready(Ok(()));
                        }
                        Poll::Pending
                    }
                    ready => {
                        if buf.filled().len() > filled {
                            this.touch();
                        }
                        ready
                    }
                }
            }
            Mode::Deferred { .. } => this.poll_deferred(cx),
            Mode::Refusing { .. } => this.poll_refusing(cx).map(Ok),
            Mode::ReadClosed | Mode::Closed => Poll::Ready(Ok(())),
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> FramingGuard<IO> {
    /// Before the reader writes: `Some` when the write must not reach the socket.
    fn before_write(&mut self, cx: &mut Context<'_>) -> Option<Poll<io::Result<usize>>> {
        match self.mode {
            Mode::Refusing { .. } => Some(self.poll_refusing(cx).map(|()| Err(closed()))),
            Mode::Closed => Some(Poll::Ready(Err(closed()))),
            _ => None,
        }
    }

    /// After the reader wrote.
    fn after_write(&mut self, polled: &Poll<io::Result<usize>>) {
        match polled {
            Poll::Ready(Ok(n)) if *n > 0 => {
                self.write_idle = false;
                self.written_since_head = true;
                if let Some(clock) = self.clock.as_mut() {
                    clock.last_activity = Instant::now();
                }
            }
            Poll::Pending => self.write_idle = false,
            Poll::Ready(_) => {}
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncWrite for FramingGuard<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(refused) = this.before_write(cx) {
            return refused;
        }
        let polled = Pin::new(&mut this.io).poll_write(cx, data);
        this.after_write(&polled);
        polled
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(refused) = this.before_write(cx) {
            return refused;
        }
        let polled = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.after_write(&polled);
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match this.mode {
            Mode::Refusing { .. } => return this.poll_refusing(cx).map(Ok),
            Mode::Closed => return Poll::Ready(Ok(())),
            _ => {}
        }
        let polled = Pin::new(&mut this.io).poll_flush(cx);
        if let Poll::Ready(Ok(())) = polled {
            this.write_idle = true;
            if let Some(waker) = this.read_waker.take() {
                waker.wake();
            }
        }
        polled
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match this.mode {
            Mode::Refusing { .. } => this.poll_refusing(cx).map(Ok),
            Mode::Closed => Poll::Ready(Ok(())),
            _ => Pin::new(&mut this.io).poll_shutdown(cx),
        }
    }
}

/// What one scan found.
#[derive(Debug, Default)]
struct Scanned {
    /// A head was completed (and handed on) in these bytes.
    completed_head: bool,
    /// The first refused byte, if any.
    stop: Option<Stop>,
}

/// A refused byte.
#[derive(Debug)]
struct Stop {
    /// Its index in the bytes scanned.
    at: usize,
    refusal: Refusal,
    /// Found in a head (else in a body).
    in_head: bool,
    /// The reader was handed bytes of this head or body in an earlier read.
    seen: bool,
    /// Where this head started in the bytes scanned (0 when it started earlier).
    head_from: usize,
}

/// The byte stream, message by message.
#[derive(Debug)]
struct Scanner {
    max_header_bytes: usize,
    message: Message,
}

/// The part of a message the next byte belongs to.
#[derive(Debug)]
enum Message {
    Head(Head),
    /// `remaining` bytes of a `Content-Length` body.
    Length {
        remaining: u64,
        seen: bool,
    },
    /// A chunked body.
    Chunked {
        body: Chunked,
        seen: bool,
    },
}

impl Scanner {
    fn new(max_header_bytes: usize) -> Self {
        Self {
            max_header_bytes: max_header_bytes.max(1),
            message: Message::Head(Head::default()),
        }
    }

    /// A new read starts: whatever was scanned before has been handed on.
    fn begin_read(&mut self) {
        match &mut self.message {
            Message::Head(head) => head.seen = head.len > 0,
            Message::Length { seen, .. } | Message::Chunked { seen, .. } => *seen = true,
        }
    }

    /// Scans `bytes`, the next bytes of the stream, up to the first refused byte.
    fn scan(&mut self, bytes: &[u8]) -> Scanned {
        let mut scanned = Scanned::default();
        let mut at = 0;
        let mut head_from = 0;
        while let Some(rest) = bytes.get(at..).filter(|rest| !rest.is_empty()) {
            match &mut self.message {
                Message::Head(head) => match head.scan(rest, self.max_header_bytes) {
                    HeadScan::Partial => at = bytes.len(),
                    HeadScan::Complete { used, body } => {
                        at += used;
                        scanned.completed_head = true;
                        self.message = match body {
                            Body::None => Message::Head(Head::default()),
                            Body::Length(remaining) => Message::Length {
                                remaining,
                                seen: false,
                            },
                            Body::Chunked => Message::Chunked {
                                body: Chunked::default(),
                                seen: false,
                            },
                        };
                        head_from = at;
                    }
                    HeadScan::Refused {
                        at: refused,
                        refusal,
                    } => {
                        scanned.stop = Some(Stop {
                            at: at + refused,
                            refusal,
                            in_head: true,
                            seen: head.seen,
                            head_from,
                        });
                        return scanned;
                    }
                },
                Message::Length { remaining, .. } => {
                    let available = u64::try_from(rest.len()).unwrap_or(u64::MAX);
                    let take = (*remaining).min(available);
                    *remaining -= take;
                    at += usize::try_from(take).unwrap_or(rest.len());
                    if *remaining == 0 {
                        self.message = Message::Head(Head::default());
                        head_from = at;
                    }
                }
                Message::Chunked { body, seen } => match body.scan(rest, self.max_header_bytes) {
                    ChunkScan::Partial => at = bytes.len(),
                    ChunkScan::End { used } => {
                        at += used;
                        self.message = Message::Head(Head::default());
                        head_from = at;
                    }
                    ChunkScan::Refused { at: refused } => {
                        scanned.stop = Some(Stop {
                            at: at + refused,
                            refusal: Refusal::Framing,
                            in_head: false,
                            seen: *seen,
                            head_from,
                        });
                        return scanned;
                    }
                },
            }
        }
        scanned
    }
}

/// The index of the first CR or LF in `bytes`.
fn line_break(bytes: &[u8]) -> Option<usize> {
    bytes.iter().position(|&b| b == b'\r' || b == b'\n')
}

const CONTENT_LENGTH: &[u8] = b"content-length";
const TRANSFER_ENCODING: &[u8] = b"transfer-encoding";
const CHUNKED: &[u8] = b"chunked";

/// How the head frames the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Body {
    None,
    Length(u64),
    Chunked,
}

/// The result of scanning part of a head.
#[derive(Debug)]
enum HeadScan {
    /// All bytes belong to the head, which goes on.
    Partial,
    /// The head ends after `used` bytes.
    Complete { used: usize, body: Body },
    /// The byte at `at` is refused.
    Refused { at: usize, refusal: Refusal },
}

/// A request head being scanned.
#[derive(Debug, Default)]
struct Head {
    /// Bytes so far, leading empty lines included (they count against the bound in hyper's
    /// buffer too).
    len: usize,
    /// The reader holds some of these bytes from an earlier read.
    seen: bool,
    line: Line,
    /// The request line has started.
    request_line: bool,
    /// `Content-Length` lines so far.
    lengths: u8,
    /// The `Content-Length` value.
    length: u64,
    /// `Transfer-Encoding` lines so far.
    codings: u8,
}

/// Where the scan is within the current line.
#[derive(Debug, Default, Clone, Copy)]
enum Line {
    /// Before the first byte of a line.
    #[default]
    Start,
    /// The line so far is a CR: the empty line, if LF follows.
    StartCr,
    /// A request line or a header of no interest: skipped to its CR.
    Text,
    /// A header name; `matched` bytes agree with the names of interest still possible.
    Name {
        matched: usize,
        length: bool,
        coding: bool,
    },
    /// A `Content-Length` value.
    Length(LengthValue),
    /// A `Transfer-Encoding` value.
    Coding(CodingValue),
    /// A CR ended the line's text: LF must follow.
    Cr,
}

impl Head {
    fn scan(&mut self, bytes: &[u8], max: usize) -> HeadScan {
        let room = max.saturating_sub(self.len);
        let window = bytes.get(..bytes.len().min(room)).unwrap_or_default();
        let refuse = |at: usize| HeadScan::Refused {
            at,
            refusal: Refusal::Framing,
        };
        let mut i = 0;
        while let Some(&b) = window.get(i) {
            match self.line {
                Line::Start => match b {
                    b'\r' => self.line = Line::StartCr,
                    b'\n' => return refuse(i),
                    b' ' | b'\t' if self.request_line => return refuse(i),
                    _ if !self.request_line => {
                        self.request_line = true;
                        self.line = Line::Text;
                    }
                    _ => self.name_byte(b),
                },
                Line::StartCr => match b {
                    b'\n' if self.request_line => {
                        self.len += i + 1;
                        return HeadScan::Complete {
                            used: i + 1,
                            body: self.body(),
                        };
                    }
                    // A leading empty line, skipped by hyper too.
                    b'\n' => self.line = Line::Start,
                    _ => return refuse(i),
                },
                Line::Text => {
                    let rest = window.get(i..).unwrap_or_default();
                    match line_break(rest) {
                        None => {
                            i = window.len();
                            continue;
                        }
                        Some(k) => {
                            i += k;
                            if rest.get(k) == Some(&b'\n') {
                                return refuse(i);
                            }
                            self.line = Line::Cr;
                        }
                    }
                }
                Line::Name { .. } => match b {
                    b'\r' => self.line = Line::Cr,
                    b'\n' => return refuse(i),
                    _ => self.name_byte(b),
                },
                Line::Length(mut value) => match b {
                    b'\r' => {
                        self.lengths = self.lengths.saturating_add(1);
                        match value.get() {
                            Some(length) if self.lengths == 1 && self.codings == 0 => {
                                self.length = length;
                            }
                            _ => return refuse(i),
                        }
                        self.line = Line::Cr;
                    }
                    b'\n' => return refuse(i),
                    _ => {
                        value.push(b);
                        self.line = Line::Length(value);
                    }
                },
                Line::Coding(mut value) => match b {
                    b'\r' => {
                        self.codings = self.codings.saturating_add(1);
                        if self.codings > 1 || self.lengths > 0 || !value.ends_in_one_chunked() {
                            return refuse(i);
                        }
                        self.line = Line::Cr;
                    }
                    b'\n' => return refuse(i),
                    _ => {
                        value.push(b);
                        self.line = Line::Coding(value);
                    }
                },
                Line::Cr => match b {
                    b'\n' => self.line = Line::Start,
                    _ => return refuse(i),
                },
            }
            i += 1;
        }
        self.len += window.len();
        if self.len >= max {
            // Incomplete at the bound: completing it would need one byte more.
            return HeadScan::Refused {
                at: window.len().saturating_sub(1),
                refusal: Refusal::HeaderTooLarge,
            };
        }
        HeadScan::Partial
    }

    /// One byte of a header name (the first included).
    fn name_byte(&mut self, b: u8) {
        let (matched, length, coding) = match self.line {
            Line::Name {
                matched,
                length,
                coding,
            } => (matched, length, coding),
            _ => (0, true, true),
        };
        self.line = if b == b':' {
            if length && matched == CONTENT_LENGTH.len() {
                Line::Length(LengthValue::default())
            } else if coding && matched == TRANSFER_ENCODING.len() {
                Line::Coding(CodingValue::default())
            } else {
                Line::Text
            }
        } else {
            let lower = b.to_ascii_lowercase();
            let length = length && CONTENT_LENGTH.get(matched) == Some(&lower);
            let coding = coding && TRANSFER_ENCODING.get(matched) == Some(&lower);
            if length || coding {
                Line::Name {
                    matched: matched + 1,
                    length,
                    coding,
                }
            } else {
                Line::Text
            }
        };
    }

    /// The body framing of a complete, accepted head (as hyper frames it).
    fn body(&self) -> Body {
        if self.codings == 1 {
            Body::Chunked
        } else if self.lengths == 1 && self.length > 0 {
            Body::Length(self.length)
        } else {
            Body::None
        }
    }
}

/// A `Content-Length` value, parsed as it goes by: digits with optional blanks around.
#[derive(Debug, Default, Clone, Copy)]
struct LengthValue {
    state: LengthState,
    value: u64,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum LengthState {
    #[default]
    Leading,
    Digits,
    Trailing,
    Invalid,
}

impl LengthValue {
    fn push(&mut self, b: u8) {
        self.state = match (self.state, b) {
            (LengthState::Leading, b' ' | b'\t') => LengthState::Leading,
            (LengthState::Leading | LengthState::Digits, b'0'..=b'9') => {
                match self
                    .value
                    .checked_mul(10)
                    .and_then(|v| v.checked_add(u64::from(b - b'0')))
                {
                    Some(value) => {
                        self.value = value;
                        LengthState::Digits
                    }
                    None => LengthState::Invalid,
                }
            }
            (LengthState::Digits | LengthState::Trailing, b' ' | b'\t') => LengthState::Trailing,
            // A list (`5, 5`), a sign, anything else.
            _ => LengthState::Invalid,
        };
    }

    fn get(self) -> Option<u64> {
        matches!(self.state, LengthState::Digits | LengthState::Trailing).then_some(self.value)
    }
}

/// A `Transfer-Encoding` value, parsed as it goes by: does its last coding read `chunked`,
/// and did an earlier one?
#[derive(Debug, Default, Clone, Copy)]
struct CodingValue {
    /// Bytes of the current coding that spell the start of `chunked`.
    matched: usize,
    /// The current coding is not `chunked`.
    other: bool,
    /// Blanks followed the current coding's token.
    trailing: bool,
    /// An earlier coding was `chunked`.
    earlier_chunked: bool,
}

impl CodingValue {
    fn push(&mut self, b: u8) {
        match b {
            b',' => {
                self.earlier_chunked |= self.is_chunked();
                self.matched = 0;
                self.other = false;
                self.trailing = false;
            }
            b' ' | b'\t' => {
                if self.matched > 0 || self.other {
                    self.trailing = true;
                }
            }
            _ => {
                let lower = b.to_ascii_lowercase();
                if !self.trailing && !self.other && CHUNKED.get(self.matched) == Some(&lower) {
                    self.matched += 1;
                } else {
                    self.other = true;
                }
            }
        }
    }

    fn is_chunked(&self) -> bool {
        !self.other && self.matched == CHUNKED.len()
    }

    fn ends_in_one_chunked(&self) -> bool {
        self.is_chunked() && !self.earlier_chunked
    }
}

/// The result of scanning part of a chunked body.
#[derive(Debug)]
enum ChunkScan {
    /// All bytes belong to the body, which goes on.
    Partial,
    /// The body ends after `used` bytes.
    End { used: usize },
    /// The byte at `at` is refused.
    Refused { at: usize },
}

/// Where a chunked body is.
#[derive(Debug, Default, Clone, Copy)]
enum Chunk {
    /// The first hex digit of a chunk size.
    #[default]
    SizeStart,
    /// More hex digits, blanks, `;` or CR.
    Size(u64),
    /// Blanks after the size: `;` or CR.
    SizeBlank(u64),
    /// An extension, up to CR.
    Extension(u64),
    /// LF after the size line.
    SizeLf(u64),
    /// Chunk data still to come.
    Data(u64),
    /// CR after the data.
    DataCr,
    /// LF after the data.
    DataLf,
    /// The start of a trailer line, or the final CR.
    TrailerStart,
    /// A trailer line, up to CR.
    Trailer,
    /// LF after a trailer line.
    TrailerLf,
    /// LF of the final empty line.
    EndLf,
}

/// A chunked body being scanned.
#[derive(Debug, Default)]
struct Chunked {
    state: Chunk,
    extension_bytes: usize,
    trailer_bytes: usize,
}

impl Chunked {
    fn scan(&mut self, bytes: &[u8], max_trailer_bytes: usize) -> ChunkScan {
        let mut i = 0;
        while let Some(&b) = bytes.get(i) {
            self.state = match (self.state, b) {
                (Chunk::Data(remaining), _) => {
                    let available = u64::try_from(bytes.len() - i).unwrap_or(u64::MAX);
                    let take = remaining.min(available);
                    i += usize::try_from(take).unwrap_or(bytes.len() - i);
                    self.state = match remaining - take {
                        0 => Chunk::DataCr,
                        left => Chunk::Data(left),
                    };
                    continue;
                }
                (Chunk::SizeStart, _) => match hex(b) {
                    Some(digit) => Chunk::Size(u64::from(digit)),
                    None => return ChunkScan::Refused { at: i },
                },
                (Chunk::Size(size), _) => match (hex(b), b) {
                    (Some(digit), _) => {
                        match size
                            .checked_mul(16)
                            .and_then(|s| s.checked_add(u64::from(digit)))
                        {
                            Some(size) => Chunk::Size(size),
                            None => return ChunkScan::Refused { at: i },
                        }
                    }
                    (None, b' ' | b'\t') => Chunk::SizeBlank(size),
                    (None, b';') => Chunk::Extension(size),
                    (None, b'\r') => Chunk::SizeLf(size),
                    (None, _) => return ChunkScan::Refused { at: i },
                },
                (Chunk::SizeBlank(size), b' ' | b'\t') => Chunk::SizeBlank(size),
                (Chunk::SizeBlank(size), b';') => Chunk::Extension(size),
                (Chunk::SizeBlank(size), b'\r') => Chunk::SizeLf(size),
                (Chunk::SizeBlank(_), _) => return ChunkScan::Refused { at: i },
                (Chunk::Extension(size), _) => {
                    let rest = bytes.get(i..).unwrap_or_default();
                    let text = line_break(rest).unwrap_or(rest.len());
                    let allowed = (CHUNK_EXTENSIONS_LIMIT - 1).saturating_sub(self.extension_bytes);
                    if text > allowed {
                        return ChunkScan::Refused { at: i + allowed };
                    }
                    self.extension_bytes += text;
                    i += text;
                    match rest.get(text) {
                        Some(b'\r') => Chunk::SizeLf(size),
                        Some(_) => return ChunkScan::Refused { at: i },
                        None => {
                            self.state = Chunk::Extension(size);
                            continue;
                        }
                    }
                }
                (Chunk::SizeLf(0), b'\n') => Chunk::TrailerStart,
                (Chunk::SizeLf(size), b'\n') => Chunk::Data(size),
                (Chunk::DataCr, b'\r') => Chunk::DataLf,
                (Chunk::DataLf, b'\n') => Chunk::SizeStart,
                (Chunk::TrailerStart, b'\r') => Chunk::EndLf,
                // Bare LF, or a folded trailer line.
                (Chunk::TrailerStart, b'\n' | b' ' | b'\t') => {
                    return ChunkScan::Refused { at: i };
                }
                (Chunk::TrailerStart | Chunk::Trailer, _) => {
                    let rest = bytes.get(i..).unwrap_or_default();
                    let text = line_break(rest).unwrap_or(rest.len());
                    let allowed = max_trailer_bytes.saturating_sub(self.trailer_bytes);
                    if text > allowed {
                        return ChunkScan::Refused { at: i + allowed };
                    }
                    self.trailer_bytes += text;
                    i += text;
                    match rest.get(text) {
                        Some(b'\r') => Chunk::TrailerLf,
                        Some(_) => return ChunkScan::Refused { at: i },
                        None => {
                            self.state = Chunk::Trailer;
                            continue;
                        }
                    }
                }
                (Chunk::TrailerLf, b'\n') => Chunk::TrailerStart,
                (Chunk::EndLf, b'\n') => return ChunkScan::End { used: i + 1 },
                (
                    Chunk::SizeLf(_)
                    | Chunk::DataCr
                    | Chunk::DataLf
                    | Chunk::TrailerLf
                    | Chunk::EndLf,
                    _,
                ) => return ChunkScan::Refused { at: i },
            };
            i += 1;
        }
        ChunkScan::Partial
    }
}

/// The value of a hex digit.
fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// A connection played from a script, for the fuzz target and the tests: the client's bytes
/// arrive in reads of the given sizes (cycled), and what is written back is kept.
#[derive(Debug, Default)]
pub(crate) struct ScriptedIo {
    input: Vec<u8>,
    position: usize,
    sizes: Vec<usize>,
    turn: usize,
    /// Everything written.
    pub(crate) written: Vec<u8>,
    /// `poll_shutdown` was called.
    pub(crate) shut_down: bool,
}

impl ScriptedIo {
    /// `input` in reads of `sizes` bytes (cycled; zero sizes count as one).
    pub(crate) fn new(input: &[u8], sizes: &[usize]) -> Self {
        Self {
            input: input.to_vec(),
            sizes: sizes.to_vec(),
            ..Self::default()
        }
    }
}

impl AsyncRead for ScriptedIo {
    fn poll_read(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let size = match this.sizes.len() {
            0 => usize::MAX,
            n => this.sizes.get(this.turn % n).copied().unwrap_or(1).max(1),
        };
        this.turn += 1;
        let rest = this.input.get(this.position..).unwrap_or_default();
        let n = rest.len().min(size).min(buf.remaining());
        buf.put_slice(rest.get(..n).unwrap_or_default());
        this.position += n;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for ScriptedIo {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().written.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().shut_down = true;
        Poll::Ready(Ok(()))
    }
}

/// What a reader got from a guarded scripted connection.
#[derive(Debug)]
pub(crate) struct Replay {
    /// The bytes handed on to the reader, in order.
    pub(crate) delivered: Vec<u8>,
    /// What the guard wrote back (its refusal, if any).
    pub(crate) answer: Vec<u8>,
    /// The guard shut the connection down.
    pub(crate) shut_down: bool,
}

/// Plays `input` (in reads of `sizes`) through a guard to a reader with a `capacity`-byte
/// buffer until end of file, as a synchronous loop.
pub(crate) fn replay(
    input: &[u8],
    sizes: &[usize],
    capacity: usize,
    max_header_bytes: usize,
    h2: bool,
) -> Replay {
    let mut guard = FramingGuard::new(ScriptedIo::new(input, sizes), max_header_bytes, h2);
    let mut cx = Context::from_waker(Waker::noop());
    let mut delivered = Vec::with_capacity(input.len());
    let mut chunk = vec![0_u8; capacity.max(1)];
    // Every read but the last delivers a byte, or answers and closes.
    for _ in 0..input.len() + 4 {
        let mut buf = ReadBuf::new(&mut chunk);
        match Pin::new(&mut guard).poll_read(&mut cx, &mut buf) {
            Poll::Ready(Ok(())) if !buf.filled().is_empty() => {
                delivered.extend_from_slice(buf.filled());
            }
            _ => break,
        }
    }
    Replay {
        delivered,
        answer: std::mem::take(&mut guard.io.written),
        shut_down: guard.io.shut_down,
    }
}

/// For the fuzz target: plays `data` through the guard in small reads and checks that what
/// the reader gets is a prefix of the input (all of it unless refused), and that the answer
/// does not depend on how the input was split. `Err` names the broken property.
pub(crate) fn exercise(data: &[u8]) -> Result<(), String> {
    let (first, input) = data.split_first().map_or((0, data), |(b, rest)| (*b, rest));
    let step = usize::from(first % 7) + 1;
    let max = 256;
    let outcomes = [
        replay(input, &[step, 1, step * 3], 64, max, false),
        replay(input, &[1], 7, max, false),
        replay(input, &[], 4096, max, false),
    ];
    let status = |answer: &[u8]| answer.get(..12).map(<[u8]>::to_vec);
    let expected = status(&outcomes[0].answer);
    for outcome in &outcomes {
        if !input.starts_with(&outcome.delivered) {
            return Err("the reader got bytes that were not sent".to_owned());
        }
        if outcome.answer.is_empty() && outcome.delivered.len() != input.len() {
            return Err("bytes were held back without a refusal".to_owned());
        }
        if !outcome.answer.is_empty() && !outcome.shut_down {
            return Err("a refusal did not shut the connection down".to_owned());
        }
        if status(&outcome.answer) != expected {
            return Err("the answer depends on how the bytes were split".to_owned());
        }
    }
    Ok(())
}
