//! A bound in front of the Redis client's parser. The redis crate buffers a reply of whatever size
//! the server announces (`$1900000000` is read to its end), and whatever answers on
//! `token_store.url` (something that is not Redis, a hostile one, a man in the middle of a plain
//! `redis://` link) could make a replica take hundreds of megabytes on every connection attempt.
//! What the store reads is small (values at most `MAX_VALUE`, script answers a few numbers), so
//! [`BoundedResp`] follows the RESP framing of every byte it passes on and fails the connection as
//! soon as a reply announces more than a small limit, before the parser buffers any of it.
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The longest bulk string (or verbatim string, or bulk error) read: values are at most 8 KiB.
const MAX_BULK: u64 = 64 * 1024;
/// The longest simple line: a status, an error, a number, a length.
const MAX_LINE: usize = 4 * 1024;
/// The most elements of one array, set, map or push.
const MAX_ELEMENTS: u64 = 1024;
/// The most bytes of one reply, with everything nested in it.
const MAX_REPLY: u64 = 256 * 1024;

/// Why a reply from the fleet store was refused unread.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("a reply of {0} bytes is larger than the most the proxy reads ({MAX_BULK})")]
    BulkTooLarge(u64),
    #[error("a reply line is larger than the most the proxy reads ({MAX_LINE} bytes)")]
    LineTooLong,
    #[error("a reply of {0} elements is larger than the most the proxy reads ({MAX_ELEMENTS})")]
    TooManyElements(u64),
    #[error("a reply is larger than the most the proxy reads ({MAX_REPLY} bytes in all)")]
    ReplyTooLarge,
    #[error("the answer is not RESP (a reply cannot start with byte {0:#04x})")]
    NotResp(u8),
    #[error("the answer is not RESP (a malformed length)")]
    BadLength,
}

/// Where the scanner is in the stream of replies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scan {
    /// At the start of an element: the next byte is its type.
    Type,
    /// In the line after the type byte (a simple value, or a length or count).
    Line {
        kind: u8,
        len: usize,
        value: u64,
        negative: bool,
        digits: bool,
        bad: bool,
    },
    /// In the payload of a bulk string and its CRLF: bytes left.
    Payload(u64),
}

/// Follows RESP framing byte by byte, refusing what is larger than the limits.
#[derive(Debug)]
struct Scanner {
    scan: Scan,
    /// Elements still to come in the current reply (0 between replies).
    pending: u64,
    /// Bytes of the current reply so far.
    reply_bytes: u64,
}

impl Scanner {
    fn new() -> Self {
        Self {
            scan: Scan::Type,
            pending: 0,
            reply_bytes: 0,
        }
    }

    fn feed(&mut self, mut bytes: &[u8]) -> Result<(), Refused> {
        while !bytes.is_empty() {
            if self.pending == 0 && self.scan == Scan::Type {
                // A new reply.
                self.pending = 1;
                self.reply_bytes = 0;
            }
            let taken = match self.scan {
                Scan::Payload(left) => {
                    let n = left.min(bytes.len() as u64);
                    self.scan = match left - n {
                        0 => self.element_done(),
                        left => Scan::Payload(left),
                    };
                    n as usize
                }
                Scan::Type => {
                    let kind = bytes[0];
                    if !b"+-:_#,($!=*~>%|".contains(&kind) {
                        return Err(Refused::NotResp(kind));
                    }
                    self.scan = Scan::Line {
                        kind,
                        len: 0,
                        value: 0,
                        negative: false,
                        digits: false,
                        bad: false,
                    };
                    1
                }
                Scan::Line { .. } => {
                    self.line_byte(bytes[0])?;
                    1
                }
            };
            self.reply_bytes += taken as u64;
            if self.reply_bytes > MAX_REPLY {
                return Err(Refused::ReplyTooLarge);
            }
            bytes = &bytes[taken..];
        }
        Ok(())
    }

    fn line_byte(&mut self, byte: u8) -> Result<(), Refused> {
        let Scan::Line {
            kind,
            len,
            value,
            negative,
            digits,
            bad,
        } = &mut self.scan
        else {
            unreachable!("called in a line only");
        };
        *len += 1;
        if *len > MAX_LINE {
            return Err(Refused::LineTooLong);
        }
        match byte {
            b'\r' => return Ok(()),
            b'\n' => {}
            b'-' if !*digits && !*negative => {
                *negative = true;
                return Ok(());
            }
            b'0'..=b'9' => {
                *digits = true;
                *value = value
                    .saturating_mul(10)
                    .saturating_add(u64::from(byte - b'0'));
                return Ok(());
            }
            _ => {
                *bad = true;
                return Ok(());
            }
        }
        // The end of the line: a simple value is a whole element; a length or count says what
        // follows.
        let (kind, value, negative, well_formed) = (*kind, *value, *negative, *digits && !*bad);
        let length = |limit: u64, refuse: fn(u64) -> Refused| match (well_formed, negative) {
            // -1: a null, nothing follows.
            (true, true) if value == 1 => Ok(None),
            (true, false) if value > limit => Err(refuse(value)),
            (true, false) => Ok(Some(value)),
            _ => Err(Refused::BadLength),
        };
        self.scan = match kind {
            b'$' | b'!' | b'=' => match length(MAX_BULK, Refused::BulkTooLarge)? {
                Some(n) => Scan::Payload(n + 2),
                None => self.element_done(),
            },
            b'*' | b'~' | b'>' | b'%' | b'|' => {
                let count = length(MAX_ELEMENTS, Refused::TooManyElements)?.unwrap_or(0);
                let elements = if matches!(kind, b'%' | b'|') {
                    2 * count
                } else {
                    count
                };
                // An attribute precedes the element it describes, which is still to come.
                let this = u64::from(kind != b'|');
                self.pending = self.pending + elements - this;
                Scan::Type
            }
            _ => self.element_done(),
        };
        Ok(())
    }

    /// One element of the current reply is complete.
    fn element_done(&mut self) -> Scan {
        self.pending = self.pending.saturating_sub(1);
        Scan::Type
    }
}

/// The connection to the fleet store as the redis crate reads it: every byte it reads has passed
/// through a [`Scanner`], and a reply over the limits fails the read (and the connection).
pub struct BoundedResp<S> {
    stream: S,
    scanner: Scanner,
}

impl<S> BoundedResp<S> {
    pub fn new(stream: S) -> Self {
        Self {
            stream,
            scanner: Scanner::new(),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for BoundedResp<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        std::task::ready!(Pin::new(&mut this.stream).poll_read(cx, buf))?;
        match this.scanner.feed(&buf.filled()[before..]) {
            Ok(()) => Poll::Ready(Ok(())),
            Err(refused) => Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                refused,
            ))),
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for BoundedResp<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` to a new scanner split at every `step` bytes.
    fn scan_in_steps(input: &[u8], step: usize) -> Result<Scanner, Refused> {
        let mut scanner = Scanner::new();
        for chunk in input.chunks(step) {
            scanner.feed(chunk)?;
        }
        Ok(scanner)
    }

    fn scanned(input: &[u8]) -> Result<(), Refused> {
        let mut outcome = None;
        for step in [1, 2, 3, 7, input.len().max(1)] {
            let this = scan_in_steps(input, step).map(|s| {
                assert_eq!(s.scan, Scan::Type, "{step}: ends between replies");
                assert_eq!(s.pending, 0, "{step}: nothing left of a reply");
            });
            // However the reads are split, the outcome is the same.
            assert_eq!(
                *outcome.get_or_insert(this),
                this,
                "split every {step} bytes"
            );
        }
        outcome.unwrap()
    }

    #[test]
    fn replies_the_store_gets_pass_however_they_are_split() {
        for reply in [
            &b"+PONG\r\n"[..],
            b"-ERR unknown command\r\n",
            b":42\r\n",
            b"$5\r\nhello\r\n",
            b"$-1\r\n",
            b"$0\r\n\r\n",
            b"*2\r\n$3\r\nfoo\r\n:7\r\n",
            b"*-1\r\n",
            b"*0\r\n",
            b"*2\r\n*1\r\n+a\r\n$1\r\nb\r\n",
            b"%1\r\n+proto\r\n:3\r\n",
            b"|1\r\n+ttl\r\n:3600\r\n$2\r\nok\r\n",
            b"_\r\n#t\r\n,1.5\r\n(12345678901234567890\r\n=7\r\ntxt:abc\r\n!3\r\nbad\r\n",
            b">2\r\n+message\r\n$2\r\nhi\r\n",
        ] {
            assert_eq!(scanned(reply), Ok(()), "{}", String::from_utf8_lossy(reply));
        }
        // A value just under the bound, bytes that look like framing inside it included.
        let mut big = format!("${MAX_BULK}\r\n").into_bytes();
        big.extend((0..MAX_BULK).map(|i| b"$*\r\n"[i as usize % 4]));
        big.extend_from_slice(b"\r\n+OK\r\n");
        assert_eq!(scanned(&big), Ok(()));
    }

    #[test]
    fn replies_over_the_bounds_are_refused_at_their_header() {
        assert_eq!(
            scanned(b"$1900000000\r\n"),
            Err(Refused::BulkTooLarge(1_900_000_000))
        );
        assert_eq!(
            scanned(b"*100000\r\n"),
            Err(Refused::TooManyElements(100_000))
        );
        let line = [b"+".as_slice(), &vec![b'a'; MAX_LINE + 1]].concat();
        assert_eq!(scanned(&line), Err(Refused::LineTooLong));
        // Many elements, each within bounds, that add up past the bound of one reply.
        let mut nested = b"*1000\r\n".to_vec();
        for _ in 0..1000 {
            nested.extend_from_slice(format!("${}\r\n", 1024).as_bytes());
            nested.extend(vec![b'x'; 1024]);
            nested.extend_from_slice(b"\r\n");
        }
        assert_eq!(scanned(&nested), Err(Refused::ReplyTooLarge));
        assert_eq!(scanned(b"HTTP/1.1 200 OK\r\n"), Err(Refused::NotResp(b'H')));
        for bad in [&b"$abc\r\n"[..], b"$?\r\n", b"*-2\r\n", b"$\r\n"] {
            assert_eq!(scanned(bad), Err(Refused::BadLength), "{bad:?}");
        }
    }
}
