//! The session's connection: a buffered reader for command lines, DATA and BDAT content,
//! and a write buffer flushed at pipelining sync points.
//!
//! Reading is done here, byte-exact, rather than with a line codec, because the rules are
//! SMTP's own: command lines have a length limit after which the rest of the line is
//! discarded and the session goes on; DATA ends only at `CRLF.CRLF` in the raw stream and
//! is dot-unstuffed; BDAT takes an exact octet count.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

/// Read buffer size; also the largest partial DATA line held before it is consumed.
const READ_CHUNK: usize = 64 * 1024;

/// The transport, plain or TLS (after STARTTLS or on an implicit-TLS listener).
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    /// Taken away for the TLS handshake; reads see end of stream, writes fail.
    Detached,
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Detached => Poll::Ready(Ok(())),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Detached => Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s).poll_flush(cx),
            Stream::Detached => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Detached => Poll::Ready(Ok(())),
        }
    }
}

/// What reading a command line gave.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// A complete line, LF included.
    Complete(Vec<u8>),
    /// The line was longer than the limit; it has been read and discarded up to its LF.
    TooLong,
    /// The client closed the connection.
    Closed,
}

/// What reading message content gave.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Content {
    /// Octets received (after dot-unstuffing for DATA), counted even past the size limit.
    pub size: u64,
    /// A CR not followed by LF, or an LF not preceded by CR, occurred.
    pub bare_line_ending: bool,
    /// The content exceeded the limit; `body` holds only what fitted.
    pub oversize: bool,
}

/// Tracks line endings across chunk boundaries (BDAT, where CRLF may be split).
#[derive(Debug, Default, Clone, Copy)]
pub struct LineEndings {
    prev_cr: bool,
    bare: bool,
}

impl LineEndings {
    pub fn feed(&mut self, bytes: &[u8]) {
        for &b in bytes {
            match b {
                b'\n' if !self.prev_cr => self.bare = true,
                _ if self.prev_cr && b != b'\n' => self.bare = true,
                _ => {}
            }
            self.prev_cr = b == b'\r';
        }
    }

    /// True when a bare CR or LF was seen (a trailing CR counts as bare).
    pub fn finish(&self) -> bool {
        self.bare || self.prev_cr
    }
}

pub struct Conn {
    stream: Stream,
    input: BytesMut,
    output: Vec<u8>,
}

impl Conn {
    pub fn new(stream: Stream) -> Self {
        Self {
            stream,
            input: BytesMut::with_capacity(READ_CHUNK),
            output: Vec::with_capacity(4096),
        }
    }

    pub fn stream(&self) -> &Stream {
        &self.stream
    }

    /// Queues bytes to be sent at the next flush.
    pub fn queue(&mut self, bytes: &[u8]) {
        self.output.extend_from_slice(bytes);
    }

    pub fn output(&mut self) -> &mut Vec<u8> {
        &mut self.output
    }

    /// Whether the client already sent more than has been read (pipelining).
    pub fn has_buffered_input(&self) -> bool {
        !self.input.is_empty()
    }

    /// Drops input the client sent before it could have seen our last reply. After
    /// STARTTLS this is what keeps plaintext commands from being taken as if they had
    /// arrived over TLS (CVE-2011-0411). Returns how many octets were dropped.
    pub fn discard_buffered_input(&mut self) -> usize {
        let n = self.input.len();
        self.input.clear();
        n
    }

    pub async fn flush(&mut self) -> io::Result<()> {
        if !self.output.is_empty() {
            self.stream.write_all(&self.output).await?;
            self.output.clear();
        }
        self.stream.flush().await
    }

    /// Takes the transport for the TLS handshake. Output must have been flushed and
    /// buffered input discarded first.
    pub fn take_stream(&mut self) -> Stream {
        std::mem::replace(&mut self.stream, Stream::Detached)
    }

    /// Puts the (now encrypted) transport back.
    pub fn set_stream(&mut self, stream: Stream) {
        self.stream = stream;
    }

    async fn fill(&mut self) -> io::Result<usize> {
        if self.input.capacity() - self.input.len() < 4096 {
            self.input.reserve(READ_CHUNK);
        }
        self.stream.read_buf(&mut self.input).await
    }

    /// Reads one command line of at most `limit` octets, LF included.
    pub async fn read_line(&mut self, limit: usize) -> io::Result<Line> {
        let mut discarding = false;
        loop {
            if let Some(pos) = memchr::memchr(b'\n', &self.input) {
                let line = self.input.split_to(pos + 1);
                if discarding || line.len() > limit {
                    return Ok(Line::TooLong);
                }
                return Ok(Line::Complete(line.to_vec()));
            }
            if self.input.len() > limit {
                discarding = true;
                self.input.clear();
            }
            if self.fill().await? == 0 {
                return Ok(Line::Closed);
            }
        }
    }

    /// Reads DATA content up to the `CRLF.CRLF` that ends it, dot-unstuffed, into `body`
    /// (at most `max` octets). Only CRLF ends a line for the terminator: a bare LF or CR
    /// never ends DATA, so no second message can be smuggled in (and the content is
    /// flagged so the session refuses it). `Ok(None)`: the client closed the connection.
    pub async fn read_data(&mut self, body: &mut Vec<u8>, max: u64) -> io::Result<Option<Content>> {
        let mut content = Content::default();
        // At the start of a line that follows a CRLF (or the DATA command).
        let mut line_start = true;
        loop {
            // Consume every complete line in the buffer.
            while let Some(pos) = memchr::memchr(b'\n', &self.input) {
                let line = &self.input[..=pos];
                if line_start && line == b".\r\n" {
                    self.input.advance(pos + 1);
                    return Ok(Some(content));
                }
                let start = usize::from(line_start && line.first() == Some(&b'.'));
                let line = &line[start..];
                check_line(line, true, &mut content);
                append(body, line, max, &mut content);
                // Only CRLF starts a line that may hold the terminator.
                line_start = line.ends_with(b"\r\n");
                self.input.advance(start + line.len());
            }
            // A long partial line: take all but a trailing CR (which may start a CRLF)
            // and, at a line start, the first octets that could still become ".\r\n".
            if self.input.len() >= READ_CHUNK {
                let mut take = self.input.len();
                if self.input.last() == Some(&b'\r') {
                    take -= 1;
                }
                let start = usize::from(line_start && self.input.first() == Some(&b'.'));
                let part = &self.input[start..take];
                check_line(part, false, &mut content);
                let part_len = part.len();
                let part = part.to_vec();
                append(body, &part, max, &mut content);
                self.input.advance(start + part_len);
                line_start = false;
            }
            if self.fill().await? == 0 {
                return Ok(None);
            }
        }
    }

    /// Reads exactly `n` octets of a BDAT chunk into `body` (kept only while `body` stays
    /// within `max`; `None` in `body` discards them). `Ok(false)`: the client closed the
    /// connection first.
    pub async fn read_chunk(
        &mut self,
        n: usize,
        mut body: Option<&mut Vec<u8>>,
        endings: &mut LineEndings,
    ) -> io::Result<bool> {
        let mut left = n;
        loop {
            let take = left.min(self.input.len());
            if take > 0 {
                let part = self.input.split_to(take);
                endings.feed(&part);
                if let Some(body) = body.as_deref_mut() {
                    body.extend_from_slice(&part);
                }
                left -= take;
            }
            if left == 0 {
                return Ok(true);
            }
            if self.fill().await? == 0 {
                return Ok(false);
            }
        }
    }

    /// Sends the queued output and closes the write side.
    pub async fn close(mut self) {
        let _ = self.flush().await;
        let _ = self.stream.shutdown().await;
    }
}

/// Flags bare CR and LF inside one line (`complete`: it ends with its LF).
fn check_line(line: &[u8], complete: bool, content: &mut Content) {
    let body = if complete {
        match line {
            [head @ .., b'\r', b'\n'] => head,
            [head @ .., b'\n'] => {
                content.bare_line_ending = true;
                head
            }
            other => other,
        }
    } else {
        line
    };
    if memchr::memchr2(b'\r', b'\n', body).is_some() {
        content.bare_line_ending = true;
    }
}

fn append(body: &mut Vec<u8>, bytes: &[u8], max: u64, content: &mut Content) {
    content.size += bytes.len() as u64;
    if content.size > max {
        content.oversize = true;
    } else {
        body.extend_from_slice(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_endings_across_chunks() {
        let mut e = LineEndings::default();
        e.feed(b"a\r");
        e.feed(b"\nb\r\n");
        assert!(!e.finish());
        e.feed(b"c\nd");
        assert!(e.finish());
        let mut e = LineEndings::default();
        e.feed(b"x\ry");
        assert!(e.finish());
        let mut e = LineEndings::default();
        e.feed(b"x\r");
        assert!(e.finish(), "a trailing CR is bare");
    }

    #[test]
    fn bare_endings_inside_lines_are_flagged() {
        for (line, complete, bare) in [
            (&b"abc\r\n"[..], true, false),
            (b"abc\n", true, true),
            (b"a\rbc\r\n", true, true),
            (b"abc", false, false),
            (b"a\nbc", false, true),
        ] {
            let mut c = Content::default();
            check_line(line, complete, &mut c);
            assert_eq!(c.bare_line_ending, bare, "{line:?}");
        }
    }
}
