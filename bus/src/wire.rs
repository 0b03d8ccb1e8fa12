//! Wire format v1: one header frame plus one body frame per message.
//!
//! Every bus message is a ZeroMQ multipart message of exactly two frames
//! (a ROUTER adds the peer identity in front, which the DEALER never sees):
//!
//! ```text
//! frame 0: header   fixed 16-byte prefix, then kind-specific fields
//! frame 1: body     opaque bytes, may be empty; never copied into the header
//! ```
//!
//! All integers are little-endian. `str8` is a `u8` length followed by that
//! many bytes; `str16` is a `u16` length followed by that many bytes.
//! Text fields (service, method, http method, path, request id, topic,
//! message, header names) must be UTF-8; header values are raw bytes.
//!
//! ```text
//! offset size  field
//! 0      1     version            = 1
//! 1      1     kind               1 request, 2 reply, 3 event, 4 error
//! 2      2     flags              bit 0 (requests): GHOST, a mirrored copy whose
//!                                 reply is compared and dropped; do no side
//!                                 effects. Other bits reserved: senders write
//!                                 0, readers ignore
//! 4      8     correlation id     u64, chosen by the caller, echoed in the reply
//! 12     4     budget             u32 µs left before the caller gives up
//!                                 (requests; 0 = already expired; others write 0)
//! 16     ...   kind-specific fields:
//!
//! request: str8 service, str8 method, str8 http_method, str16 path,
//!          str8 request_id, u16 header count, count × (str8 name, str16 value)
//! reply:   u16 status, u16 header count, count × (str8 name, str16 value)
//! event:   str8 topic
//! error:   u16 status, str16 message
//! ```
//!
//! The header frame must end exactly after its last field: trailing bytes are
//! an error, so a v1 reader never half-understands a future layout (a new
//! layout gets a new version byte).
//!
//! Decoding is total: [`decode`] returns a [`DecodeError`] for any input it
//! does not accept and never panics; fields are slices of the received frame
//! (`Bytes`), so decoding allocates only the header list.
//!
//! What a whole bus hop costs, encoding included, is measured by
//! `cargo bench -p bus --bench roundtrip` (figures in `docs/benchmarks.md`).

use bytes::{BufMut, Bytes};
use std::fmt;

/// The only version this crate writes and reads.
pub const VERSION: u8 = 1;
/// Size of the fixed prefix every header frame starts with.
pub const PREFIX_LEN: usize = 16;
/// Flags bit 0 on a request: a ghost copy (traffic mirrored to a version
/// under test). Its reply is compared with the real one and dropped, so a
/// service should skip side effects (writes, emails, payments) and pass
/// the flag on to the calls it makes.
pub const FLAG_GHOST: u16 = 0x0001;

/// What a message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Request = 1,
    Reply = 2,
    Event = 3,
    Error = 4,
}

impl Kind {
    fn from_u8(v: u8) -> Result<Kind, DecodeError> {
        Ok(match v {
            1 => Kind::Request,
            2 => Kind::Reply,
            3 => Kind::Event,
            4 => Kind::Error,
            other => return Err(DecodeError::UnknownKind(other)),
        })
    }
}

/// Why a frame was rejected. Every variant is a property of the input, never
/// of the decoder: a sender that sees one has a bug to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("header frame shorter than the {PREFIX_LEN}-byte prefix ({0} bytes)")]
    ShortPrefix(usize),
    #[error("unknown wire version {0} (this reader speaks {VERSION})")]
    UnknownVersion(u8),
    #[error("unknown message kind {0}")]
    UnknownKind(u8),
    #[error("header frame truncated in field `{0}`")]
    Truncated(&'static str),
    #[error("field `{0}` is not valid UTF-8")]
    InvalidUtf8(&'static str),
    #[error("{0} trailing bytes after the last header field")]
    TrailingBytes(usize),
    #[error("expected 2 frames (header, body), got {0}")]
    FrameCount(usize),
}

/// `Bytes` known to hold UTF-8. Cheap to clone; a slice of the frame it was
/// decoded from, so reading a text field allocates nothing.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Text(Bytes);

impl Text {
    pub const fn from_static(s: &'static str) -> Text {
        Text(Bytes::from_static(s.as_bytes()))
    }

    /// Checks that `b` is UTF-8.
    pub fn try_from_bytes(b: Bytes) -> Result<Text, std::str::Utf8Error> {
        std::str::from_utf8(&b)?;
        Ok(Text(b))
    }

    pub fn as_str(&self) -> &str {
        // Invariant: every constructor checked (or was given) UTF-8. A failure
        // here would be a bug in this module, so fall back rather than panic.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<&'static str> for Text {
    fn from(s: &'static str) -> Text {
        Text::from_static(s)
    }
}

impl From<String> for Text {
    fn from(s: String) -> Text {
        Text(Bytes::from(s))
    }
}

impl std::ops::Deref for Text {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

/// A header list: names are text, values are bytes (HTTP allows opaque
/// values). Order and repeats are preserved.
pub type Headers = Vec<(Text, Bytes)>;

/// A request from a caller to a service.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Request {
    pub correlation_id: u64,
    /// µs the caller will still wait; 0 means the caller has given up.
    pub budget_us: u32,
    pub service: Text,
    /// The bus method, e.g. `http` for a proxied HTTP request or `kv.get`.
    pub method: Text,
    /// The HTTP method when the request came from HTTP, else empty.
    pub http_method: Text,
    /// Path and query when the request came from HTTP, else empty.
    pub path: Text,
    pub request_id: Text,
    pub headers: Headers,
    pub body: Bytes,
    /// A ghost copy ([`FLAG_GHOST`]): skip side effects, pass it on.
    pub ghost: bool,
}

impl Request {
    /// A request for `method` of `service`; fill the other fields as needed.
    pub fn new(service: impl Into<Text>, method: impl Into<Text>) -> Request {
        Request {
            service: service.into(),
            method: method.into(),
            ..Request::default()
        }
    }

    /// The first header called `name` (ASCII case-insensitive).
    pub fn header(&self, name: &str) -> Option<&Bytes> {
        find_header(&self.headers, name)
    }
}

/// A service's answer to a request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reply {
    pub correlation_id: u64,
    pub status: u16,
    pub headers: Headers,
    pub body: Bytes,
}

impl Reply {
    pub fn new(status: u16) -> Reply {
        Reply {
            status,
            ..Reply::default()
        }
    }

    pub fn with_body(status: u16, body: impl Into<Bytes>) -> Reply {
        Reply {
            status,
            body: body.into(),
            ..Reply::default()
        }
    }

    pub fn header(&self, name: &str) -> Option<&Bytes> {
        find_header(&self.headers, name)
    }
}

/// A published event (PUB/SUB). On a PUB socket it is preceded by a frame
/// holding the topic alone, so that SUB prefix filtering works.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Event {
    pub topic: Text,
    pub body: Bytes,
}

/// A bus-level failure: the service (or its runtime) could not produce a
/// reply. `status` uses HTTP codes: 400 malformed request, 404 unknown
/// method, 503 overloaded or draining, 504 expired, 500 handler failure.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErrorReply {
    pub correlation_id: u64,
    pub status: u16,
    pub message: Text,
}

/// One decoded bus message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Request(Request),
    Reply(Reply),
    Event(Event),
    Error(ErrorReply),
}

fn find_header<'a>(headers: &'a Headers, name: &str) -> Option<&'a Bytes> {
    headers
        .iter()
        .find(|(n, _)| n.as_str().eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
}

// ---------------------------------------------------------------- encoding

/// Why a message could not be encoded: a field is longer than its length
/// prefix allows. Checked before a single byte is written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("field `{field}` is {len} bytes, the wire allows {max}")]
    TooLong {
        field: &'static str,
        len: usize,
        max: usize,
    },
    #[error("{0} headers, the wire allows 65535")]
    TooManyHeaders(usize),
}

fn check(field: &'static str, len: usize, max: usize) -> Result<(), EncodeError> {
    if len > max {
        Err(EncodeError::TooLong { field, len, max })
    } else {
        Ok(())
    }
}

fn check_headers(headers: &Headers) -> Result<usize, EncodeError> {
    if headers.len() > u16::MAX as usize {
        return Err(EncodeError::TooManyHeaders(headers.len()));
    }
    let mut size = 2;
    for (n, v) in headers {
        check("header name", n.len(), u8::MAX as usize)?;
        check("header value", v.len(), u16::MAX as usize)?;
        size += 1 + n.len() + 2 + v.len();
    }
    Ok(size)
}

fn put_prefix(buf: &mut Vec<u8>, kind: Kind, flags: u16, id: u64, budget_us: u32) {
    buf.put_u8(VERSION);
    buf.put_u8(kind as u8);
    buf.put_u16_le(flags);
    buf.put_u64_le(id);
    buf.put_u32_le(budget_us);
}

fn put_str8(buf: &mut Vec<u8>, b: &[u8]) {
    buf.put_u8(b.len() as u8);
    buf.put_slice(b);
}

fn put_str16(buf: &mut Vec<u8>, b: &[u8]) {
    buf.put_u16_le(b.len() as u16);
    buf.put_slice(b);
}

fn put_headers(buf: &mut Vec<u8>, headers: &Headers) {
    buf.put_u16_le(headers.len() as u16);
    for (n, v) in headers {
        put_str8(buf, n.as_bytes());
        put_str16(buf, v);
    }
}

/// Encodes the header frame of a request. The body travels as its own frame.
pub fn encode_request(r: &Request) -> Result<Vec<u8>, EncodeError> {
    check("service", r.service.len(), u8::MAX as usize)?;
    check("method", r.method.len(), u8::MAX as usize)?;
    check("http_method", r.http_method.len(), u8::MAX as usize)?;
    check("path", r.path.len(), u16::MAX as usize)?;
    check("request_id", r.request_id.len(), u8::MAX as usize)?;
    let hsize = check_headers(&r.headers)?;
    let size = PREFIX_LEN
        + 1
        + r.service.len()
        + 1
        + r.method.len()
        + 1
        + r.http_method.len()
        + 2
        + r.path.len()
        + 1
        + r.request_id.len()
        + hsize;
    let mut buf = Vec::with_capacity(size);
    let flags = if r.ghost { FLAG_GHOST } else { 0 };
    put_prefix(
        &mut buf,
        Kind::Request,
        flags,
        r.correlation_id,
        r.budget_us,
    );
    put_str8(&mut buf, r.service.as_bytes());
    put_str8(&mut buf, r.method.as_bytes());
    put_str8(&mut buf, r.http_method.as_bytes());
    put_str16(&mut buf, r.path.as_bytes());
    put_str8(&mut buf, r.request_id.as_bytes());
    put_headers(&mut buf, &r.headers);
    debug_assert_eq!(buf.len(), size);
    Ok(buf)
}

/// Encodes the header frame of a reply.
pub fn encode_reply(r: &Reply) -> Result<Vec<u8>, EncodeError> {
    let hsize = check_headers(&r.headers)?;
    let mut buf = Vec::with_capacity(PREFIX_LEN + 2 + hsize);
    put_prefix(&mut buf, Kind::Reply, 0, r.correlation_id, 0);
    buf.put_u16_le(r.status);
    put_headers(&mut buf, &r.headers);
    Ok(buf)
}

/// Encodes the header frame of an event.
pub fn encode_event(e: &Event) -> Result<Vec<u8>, EncodeError> {
    check("topic", e.topic.len(), u8::MAX as usize)?;
    let mut buf = Vec::with_capacity(PREFIX_LEN + 1 + e.topic.len());
    put_prefix(&mut buf, Kind::Event, 0, 0, 0);
    put_str8(&mut buf, e.topic.as_bytes());
    Ok(buf)
}

/// Encodes the header frame of an error; the body frame is empty.
pub fn encode_error(e: &ErrorReply) -> Vec<u8> {
    // A message longer than the field is cut at a char boundary rather than
    // refused: an error about an error would reach nobody.
    let mut msg = e.message.as_str();
    if msg.len() > u16::MAX as usize {
        let mut end = u16::MAX as usize;
        while !msg.is_char_boundary(end) {
            end -= 1;
        }
        msg = &msg[..end];
    }
    let mut buf = Vec::with_capacity(PREFIX_LEN + 4 + msg.len());
    put_prefix(&mut buf, Kind::Error, 0, e.correlation_id, 0);
    buf.put_u16_le(e.status);
    put_str16(&mut buf, msg.as_bytes());
    buf
}

/// Encodes any message into its (header, body) frames.
pub fn encode(m: &Message) -> Result<(Vec<u8>, Bytes), EncodeError> {
    Ok(match m {
        Message::Request(r) => (encode_request(r)?, r.body.clone()),
        Message::Reply(r) => (encode_reply(r)?, r.body.clone()),
        Message::Event(e) => (encode_event(e)?, e.body.clone()),
        Message::Error(e) => (encode_error(e), Bytes::new()),
    })
}

// ---------------------------------------------------------------- decoding

/// The fixed prefix of a header frame, readable without decoding the rest:
/// the transport threads route on it and leave full decoding to the task that
/// consumes the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prefix {
    pub kind: Kind,
    pub flags: u16,
    pub correlation_id: u64,
    pub budget_us: u32,
}

/// Reads the 16-byte prefix: version, kind, correlation id and budget.
pub fn peek(header: &[u8]) -> Result<Prefix, DecodeError> {
    if header.len() < PREFIX_LEN {
        return Err(DecodeError::ShortPrefix(header.len()));
    }
    if header[0] != VERSION {
        return Err(DecodeError::UnknownVersion(header[0]));
    }
    let kind = Kind::from_u8(header[1])?;
    let mut id = [0u8; 8];
    id.copy_from_slice(&header[4..12]);
    let mut budget = [0u8; 4];
    budget.copy_from_slice(&header[12..16]);
    Ok(Prefix {
        kind,
        flags: u16::from_le_bytes([header[2], header[3]]),
        correlation_id: u64::from_le_bytes(id),
        budget_us: u32::from_le_bytes(budget),
    })
}

/// A cursor over the header frame. Every read checks the remaining length
/// first and fails with the name of the field it was reading.
struct Reader {
    buf: Bytes,
    pos: usize,
}

impl Reader {
    fn take(&mut self, n: usize, field: &'static str) -> Result<Bytes, DecodeError> {
        if self.buf.len() - self.pos < n {
            return Err(DecodeError::Truncated(field));
        }
        let b = self.buf.slice(self.pos..self.pos + n);
        self.pos += n;
        Ok(b)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        let b = self.take(1, field)?;
        Ok(b[0])
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        let b = self.take(2, field)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn bytes8(&mut self, field: &'static str) -> Result<Bytes, DecodeError> {
        let n = self.u8(field)? as usize;
        self.take(n, field)
    }

    fn bytes16(&mut self, field: &'static str) -> Result<Bytes, DecodeError> {
        let n = self.u16(field)? as usize;
        self.take(n, field)
    }

    fn text8(&mut self, field: &'static str) -> Result<Text, DecodeError> {
        Text::try_from_bytes(self.bytes8(field)?).map_err(|_| DecodeError::InvalidUtf8(field))
    }

    fn text16(&mut self, field: &'static str) -> Result<Text, DecodeError> {
        Text::try_from_bytes(self.bytes16(field)?).map_err(|_| DecodeError::InvalidUtf8(field))
    }

    fn headers(&mut self) -> Result<Headers, DecodeError> {
        let count = self.u16("header count")? as usize;
        // Each header takes at least 3 bytes: never reserve more than the
        // frame could hold, whatever the count claims.
        let cap = count.min((self.buf.len() - self.pos) / 3);
        let mut out = Vec::with_capacity(cap);
        for _ in 0..count {
            let n = self.text8("header name")?;
            let v = self.bytes16("header value")?;
            out.push((n, v));
        }
        Ok(out)
    }

    fn finish(self) -> Result<(), DecodeError> {
        match self.buf.len() - self.pos {
            0 => Ok(()),
            n => Err(DecodeError::TrailingBytes(n)),
        }
    }
}

/// Decodes a header frame and its body frame into a [`Message`].
pub fn decode(header: Bytes, body: Bytes) -> Result<Message, DecodeError> {
    let p = peek(&header)?;
    let mut r = Reader {
        buf: header,
        pos: PREFIX_LEN,
    };
    let m = match p.kind {
        Kind::Request => {
            let service = r.text8("service")?;
            let method = r.text8("method")?;
            let http_method = r.text8("http_method")?;
            let path = r.text16("path")?;
            let request_id = r.text8("request_id")?;
            let headers = r.headers()?;
            Message::Request(Request {
                correlation_id: p.correlation_id,
                budget_us: p.budget_us,
                service,
                method,
                http_method,
                path,
                request_id,
                headers,
                body,
                ghost: p.flags & FLAG_GHOST != 0,
            })
        }
        Kind::Reply => {
            let status = r.u16("status")?;
            let headers = r.headers()?;
            Message::Reply(Reply {
                correlation_id: p.correlation_id,
                status,
                headers,
                body,
            })
        }
        Kind::Event => Message::Event(Event {
            topic: r.text8("topic")?,
            body,
        }),
        Kind::Error => {
            let status = r.u16("status")?;
            let message = r.text16("message")?;
            Message::Error(ErrorReply {
                correlation_id: p.correlation_id,
                status,
                message,
            })
        }
    };
    r.finish()?;
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_request() -> Request {
        Request {
            correlation_id: 0x0102_0304_0506_0708,
            budget_us: 2_000_000,
            service: "aggregator".into(),
            method: "http".into(),
            http_method: "GET".into(),
            path: "/echo?x=1".into(),
            request_id: "r1".into(),
            headers: vec![("accept".into(), Bytes::from_static(b"*/*"))],
            body: Bytes::from_static(b"hi"),
            ghost: false,
        }
    }

    #[test]
    fn request_round_trip() {
        let r = sample_request();
        let h = encode_request(&r).unwrap();
        let m = decode(Bytes::from(h), r.body.clone()).unwrap();
        assert_eq!(m, Message::Request(r));
    }

    #[test]
    fn the_ghost_flag_is_bit_0_and_other_bits_are_ignored() {
        let mut r = sample_request();
        r.ghost = true;
        let h = encode_request(&r).unwrap();
        assert_eq!(&h[2..4], &[0x01, 0x00]);
        assert_eq!(
            decode(Bytes::from(h.clone()), r.body.clone()).unwrap(),
            Message::Request(r.clone())
        );
        // A future flag this reader does not know changes nothing.
        let mut h2 = h.clone();
        h2[2] = 0x03;
        h2[3] = 0x80;
        assert_eq!(
            decode(Bytes::from(h2), r.body.clone()).unwrap(),
            Message::Request(r.clone())
        );
        let mut plain = h;
        plain[2] = 0x02;
        let Message::Request(back) = decode(Bytes::from(plain), r.body.clone()).unwrap() else {
            panic!("not a request")
        };
        assert!(!back.ghost);
    }

    #[test]
    fn documented_request_bytes() {
        // The worked example in docs/protocol.md: keep the two in step.
        let r = Request {
            correlation_id: 7,
            budget_us: 1_500_000,
            service: "aggregator".into(),
            method: "http".into(),
            http_method: "GET".into(),
            path: "/echo".into(),
            request_id: "abc".into(),
            headers: vec![("accept".into(), Bytes::from_static(b"*/*"))],
            body: Bytes::new(),
            ghost: false,
        };
        let h = encode_request(&r).unwrap();
        let hex: String = h.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "01010000\
             0700000000000000\
             60e31600\
             0a61676772656761746f72\
             0468747470\
             03474554\
             05002f6563686f\
             03616263\
             0100\
             06616363657074\
             03002a2f2a"
        );
    }

    #[test]
    fn documented_reply_bytes() {
        let r = Reply {
            correlation_id: 7,
            status: 200,
            headers: vec![("content-type".into(), Bytes::from_static(b"text/plain"))],
            body: Bytes::from_static(b"hello"),
        };
        let h = encode_reply(&r).unwrap();
        let hex: String = h.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "01020000\
             0700000000000000\
             00000000\
             c800\
             0100\
             0c636f6e74656e742d74797065\
             0a00746578742f706c61696e"
        );
    }

    #[test]
    fn every_truncation_is_an_error() {
        let h = encode_request(&sample_request()).unwrap();
        for n in 0..h.len() {
            let e = decode(Bytes::copy_from_slice(&h[..n]), Bytes::new());
            assert!(e.is_err(), "prefix of {n} bytes decoded");
        }
    }

    #[test]
    fn trailing_bytes_are_an_error() {
        let mut h = encode_request(&sample_request()).unwrap();
        h.push(0);
        assert_eq!(
            decode(Bytes::from(h), Bytes::new()),
            Err(DecodeError::TrailingBytes(1))
        );
    }

    #[test]
    fn unknown_version_and_kind() {
        let mut h = encode_request(&sample_request()).unwrap();
        h[0] = 2;
        assert_eq!(
            decode(Bytes::from(h.clone()), Bytes::new()),
            Err(DecodeError::UnknownVersion(2))
        );
        h[0] = 1;
        h[1] = 9;
        assert_eq!(
            decode(Bytes::from(h), Bytes::new()),
            Err(DecodeError::UnknownKind(9))
        );
    }

    #[test]
    fn bad_utf8_is_an_error() {
        let mut r = sample_request();
        r.path = "/é".into();
        let mut h = encode_request(&r).unwrap();
        let pos = h.windows(2).position(|w| w == "é".as_bytes()).unwrap();
        h[pos] = 0xff;
        assert_eq!(
            decode(Bytes::from(h), Bytes::new()),
            Err(DecodeError::InvalidUtf8("path"))
        );
    }

    #[test]
    fn huge_header_count_does_not_reserve() {
        let mut h = Vec::new();
        put_prefix(&mut h, Kind::Reply, 0, 1, 0);
        h.put_u16_le(200);
        h.put_u16_le(u16::MAX);
        assert_eq!(
            decode(Bytes::from(h), Bytes::new()),
            Err(DecodeError::Truncated("header name"))
        );
    }

    #[test]
    fn oversize_fields_refused_on_encode() {
        let mut r = sample_request();
        r.service = Text::from("x".repeat(256));
        assert!(matches!(
            encode_request(&r),
            Err(EncodeError::TooLong {
                field: "service",
                ..
            })
        ));
    }

    #[test]
    fn error_message_is_cut_not_refused() {
        let e = ErrorReply {
            correlation_id: 3,
            status: 500,
            message: Text::from("é".repeat(40_000)),
        };
        let h = encode_error(&e);
        match decode(Bytes::from(h), Bytes::new()).unwrap() {
            Message::Error(d) => {
                assert_eq!(d.status, 500);
                assert!(d.message.len() <= u16::MAX as usize);
            }
            other => panic!("{other:?}"),
        }
    }
}
