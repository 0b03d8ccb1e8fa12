//! ZMTP 3.x frames and commands (RFC 23, RFC 37), after the greeting.
//!
//! ```text
//! frame         = flags size body
//! flags         1 byte: bit 0 MORE (another frame of this message follows)
//!                       bit 1 LONG (size is 8 bytes, else 1)
//!                       bit 2 COMMAND (a command, never part of a message)
//!                       bits 3-7 reserved, must be 0
//! size          u8, or u64 big-endian when LONG
//! body          `size` bytes
//!
//! command body  = name-size(u8) name data
//! READY         metadata: repeated (name-size u8, name, value-size u32 BE, value)
//! ERROR         reason-size u8, reason
//! PING          ttl u16 BE (deciseconds), context (0-16 bytes)      (3.1)
//! PONG          context                                             (3.1)
//! SUBSCRIBE     topic prefix (rest of the body)                     (3.1)
//! CANCEL        topic prefix                                        (3.1)
//! ```
//!
//! Decoding is check-then-parse, as in mini-redis: [`check`] looks at the
//! bytes without consuming them and says how long the next frame is, that it
//! is [`FrameError::Incomplete`], or why it is refused; only then is it split
//! off the buffer. A size over the limit is refused from the size field
//! alone, before a byte of the body is buffered. Every function here is
//! total: any input gives a value or an error, never a panic.

use bytes::{Buf, BufMut, Bytes, BytesMut};

pub const MORE: u8 = 0x01;
pub const LONG: u8 = 0x02;
pub const COMMAND: u8 = 0x04;
const RESERVED: u8 = !(MORE | LONG | COMMAND);

/// Why bytes after the greeting were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Not an error of the input: more bytes are needed.
    #[error("incomplete frame")]
    Incomplete,
    #[error("reserved flag bits set ({0:#04x})")]
    ReservedFlags(u8),
    #[error("frame of {size} bytes is over the {max}-byte limit")]
    TooLarge { size: u64, max: usize },
    #[error("command frame with MORE set")]
    CommandWithMore,
    #[error("malformed {0} command")]
    BadCommand(&'static str),
}

/// One frame, split off the read buffer without a copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawFrame {
    pub flags: u8,
    pub body: Bytes,
}

impl RawFrame {
    pub fn more(&self) -> bool {
        self.flags & MORE != 0
    }
    pub fn is_command(&self) -> bool {
        self.flags & COMMAND != 0
    }
}

/// The length of the next frame's head and body, without consuming it.
pub fn check(buf: &[u8], max: usize) -> Result<(usize, usize), FrameError> {
    let Some(&flags) = buf.first() else {
        return Err(FrameError::Incomplete);
    };
    if flags & RESERVED != 0 {
        return Err(FrameError::ReservedFlags(flags));
    }
    if flags & COMMAND != 0 && flags & MORE != 0 {
        return Err(FrameError::CommandWithMore);
    }
    let (head, size) = if flags & LONG != 0 {
        let Some(b) = buf.get(1..9) else {
            return Err(FrameError::Incomplete);
        };
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        (9, u64::from_be_bytes(a))
    } else {
        let Some(&b) = buf.get(1) else {
            return Err(FrameError::Incomplete);
        };
        (2, b as u64)
    };
    if size > max as u64 {
        return Err(FrameError::TooLarge { size, max });
    }
    let size = size as usize;
    if buf.len() < head + size {
        return Err(FrameError::Incomplete);
    }
    Ok((head, size))
}

/// Splits the next complete frame off `buf`; `Ok(None)` when incomplete.
pub fn parse(buf: &mut BytesMut, max: usize) -> Result<Option<RawFrame>, FrameError> {
    match check(buf, max) {
        Ok((head, size)) => {
            let flags = buf[0];
            buf.advance(head);
            Ok(Some(RawFrame {
                flags,
                body: buf.split_to(size).freeze(),
            }))
        }
        Err(FrameError::Incomplete) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Writes a frame head for a body of `len` bytes.
pub fn put_head(out: &mut Vec<u8>, more: bool, command: bool, len: usize) {
    let mut flags = if more { MORE } else { 0 } | if command { COMMAND } else { 0 };
    if len > 255 {
        flags |= LONG;
        out.push(flags);
        out.put_u64(len as u64);
    } else {
        out.push(flags);
        out.push(len as u8);
    }
}

/// Writes one whole frame.
pub fn put_frame(out: &mut Vec<u8>, more: bool, body: &[u8]) {
    put_head(out, more, false, body.len());
    out.extend_from_slice(body);
}

/// A command after the handshake (or during it, for READY and ERROR).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Ready(Metadata),
    Error(Bytes),
    Ping {
        ttl_ds: u16,
        context: Bytes,
    },
    Pong(Bytes),
    Subscribe(Bytes),
    Cancel(Bytes),
    /// A command this side does not act on (RFC 23: ignored), or one a
    /// security mechanism reads itself (CURVE's HELLO, WELCOME, ...).
    Other {
        name: Bytes,
        data: Bytes,
    },
}

impl Command {
    /// Parses a command frame's body.
    pub fn parse(mut body: Bytes) -> Result<Command, FrameError> {
        if body.is_empty() {
            return Err(FrameError::BadCommand("empty"));
        }
        let n = body[0] as usize;
        if body.len() < 1 + n {
            return Err(FrameError::BadCommand("truncated name"));
        }
        body.advance(1);
        let name = body.split_to(n);
        let data = body;
        Ok(match &name[..] {
            b"READY" => Command::Ready(Metadata::parse(data)?),
            b"ERROR" => {
                let Some(&len) = data.first() else {
                    return Err(FrameError::BadCommand("ERROR"));
                };
                if data.len() != 1 + len as usize {
                    return Err(FrameError::BadCommand("ERROR"));
                }
                Command::Error(data.slice(1..))
            }
            b"PING" => {
                if data.len() < 2 || data.len() > 2 + 16 {
                    return Err(FrameError::BadCommand("PING"));
                }
                Command::Ping {
                    ttl_ds: u16::from_be_bytes([data[0], data[1]]),
                    context: data.slice(2..),
                }
            }
            b"PONG" => Command::Pong(data),
            b"SUBSCRIBE" => Command::Subscribe(data),
            b"CANCEL" => Command::Cancel(data),
            _ => Command::Other { name, data },
        })
    }

    /// Appends this command as one frame.
    pub fn put(&self, out: &mut Vec<u8>) {
        let mut body = Vec::new();
        let name: &[u8] = match self {
            Command::Ready(_) => b"READY",
            Command::Error(_) => b"ERROR",
            Command::Ping { .. } => b"PING",
            Command::Pong(_) => b"PONG",
            Command::Subscribe(_) => b"SUBSCRIBE",
            Command::Cancel(_) => b"CANCEL",
            Command::Other { name, .. } => name,
        };
        body.push(name.len().min(255) as u8);
        body.extend_from_slice(&name[..name.len().min(255)]);
        match self {
            Command::Ready(m) => m.put(&mut body),
            Command::Error(reason) => {
                let r = &reason[..reason.len().min(255)];
                body.push(r.len() as u8);
                body.extend_from_slice(r);
            }
            Command::Ping { ttl_ds, context } => {
                body.put_u16(*ttl_ds);
                body.extend_from_slice(&context[..context.len().min(16)]);
            }
            Command::Pong(d) | Command::Subscribe(d) | Command::Cancel(d) => {
                body.extend_from_slice(d)
            }
            Command::Other { data, .. } => body.extend_from_slice(data),
        }
        put_head(out, false, true, body.len());
        out.extend_from_slice(&body);
    }
}

/// READY metadata: name/value properties. Names compare case-insensitively.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metadata(pub Vec<(Bytes, Bytes)>);

impl Metadata {
    pub fn parse(mut data: Bytes) -> Result<Metadata, FrameError> {
        let bad = || FrameError::BadCommand("READY metadata");
        let mut props = Vec::new();
        while !data.is_empty() {
            let n = data[0] as usize;
            if n == 0 || data.len() < 1 + n + 4 {
                return Err(bad());
            }
            data.advance(1);
            let name = data.split_to(n);
            let len = data.get_u32() as usize;
            if data.len() < len {
                return Err(bad());
            }
            let value = data.split_to(len);
            // A hostile peer could send thousands of tiny properties; the
            // frame size already bounds the total, and so does this.
            if props.len() >= 64 {
                return Err(bad());
            }
            props.push((name, value));
        }
        Ok(Metadata(props))
    }

    pub fn put(&self, out: &mut Vec<u8>) {
        for (name, value) in &self.0 {
            out.push(name.len().min(255) as u8);
            out.extend_from_slice(&name[..name.len().min(255)]);
            out.put_u32(value.len() as u32);
            out.extend_from_slice(value);
        }
    }

    pub fn get(&self, name: &str) -> Option<&Bytes> {
        self.0
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(bytes: &[u8], max: usize) -> Result<Vec<RawFrame>, FrameError> {
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        while let Some(f) = parse(&mut buf, max)? {
            out.push(f);
        }
        Ok(out)
    }

    #[test]
    fn short_and_long_frames_round_trip() {
        let mut out = Vec::new();
        put_frame(&mut out, true, b"abc");
        put_frame(&mut out, false, &[7u8; 300]);
        assert_eq!(&out[..5], &[MORE, 3, b'a', b'b', b'c']);
        assert_eq!(out[5], LONG);
        assert_eq!(&out[6..14], &300u64.to_be_bytes());
        let f = frames(&out, 1000).unwrap();
        assert_eq!(f.len(), 2);
        assert!(f[0].more() && !f[1].more());
        assert_eq!(&f[0].body[..], b"abc");
        assert_eq!(f[1].body.len(), 300);
    }

    #[test]
    fn every_prefix_is_incomplete_never_an_error() {
        let mut out = Vec::new();
        put_frame(&mut out, false, &[1u8; 400]);
        for n in 0..out.len() {
            assert_eq!(check(&out[..n], 1000), Err(FrameError::Incomplete), "{n}");
        }
        assert!(check(&out, 1000).is_ok());
    }

    #[test]
    fn oversize_is_refused_from_the_size_field_alone() {
        let mut head = vec![LONG];
        head.extend_from_slice(&u64::MAX.to_be_bytes());
        assert!(matches!(
            check(&head, 16 << 20),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn reserved_bits_and_command_more_are_refused() {
        assert_eq!(check(&[0x08, 0], 10), Err(FrameError::ReservedFlags(0x08)));
        assert_eq!(
            check(&[COMMAND | MORE, 0], 10),
            Err(FrameError::CommandWithMore)
        );
    }

    #[test]
    fn commands_round_trip() {
        let cmds = [
            Command::Ready(Metadata(vec![(
                Bytes::from_static(b"Socket-Type"),
                Bytes::from_static(b"DEALER"),
            )])),
            Command::Error(Bytes::from_static(b"nope")),
            Command::Ping {
                ttl_ds: 30,
                context: Bytes::from_static(b"ctx"),
            },
            Command::Pong(Bytes::from_static(b"ctx")),
            Command::Subscribe(Bytes::from_static(b"kv.")),
            Command::Cancel(Bytes::new()),
        ];
        for c in cmds {
            let mut out = Vec::new();
            c.put(&mut out);
            let f = frames(&out, 1000).unwrap();
            assert!(f[0].is_command());
            assert_eq!(Command::parse(f[0].body.clone()).unwrap(), c);
        }
    }

    #[test]
    fn ready_metadata_reads_case_insensitively() {
        // Bytes as libzmq 4.3 writes them for a DEALER with no identity.
        let mut body = vec![5u8];
        body.extend_from_slice(b"READY");
        body.extend_from_slice(
            b"\x0bSocket-Type\x00\x00\x00\x06DEALER\x08Identity\x00\x00\x00\x00",
        );
        let Command::Ready(m) = Command::parse(Bytes::from(body)).unwrap() else {
            panic!("not READY")
        };
        assert_eq!(&m.get("socket-type").unwrap()[..], b"DEALER");
        assert_eq!(m.get("Identity").unwrap().len(), 0);
    }

    #[test]
    fn malformed_commands_are_errors() {
        for bad in [
            &b""[..],
            b"\x05REA",
            b"\x05READY\x03abc",
            b"\x05READY\x01a\x00\x00\x00\x09x",
            b"\x04PING\x00",
            b"\x05ERROR\x05ab",
        ] {
            assert!(
                Command::parse(Bytes::copy_from_slice(bad)).is_err(),
                "{bad:?}"
            );
        }
    }
}
