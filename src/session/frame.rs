//! Splitting the client byte stream into protocol messages, with a size bound.

use bytes::BytesMut;

/// One frontend message: its tag and all of its bytes (tag and length included), borrowed
/// from the read buffer (framing copies nothing; the caller advances past it when done).
#[derive(Debug)]
pub struct Frame<'a> {
    pub tag: u8,
    pub bytes: &'a [u8],
}

/// Framing errors; each ends the session.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("invalid message length {0}")]
    BadLength(usize),
    #[error("message of {0} bytes exceeds the limit of {1} bytes")]
    TooLarge(usize, usize),
}

/// The complete message at the start of `buf`, if it is all there.
pub fn next_frame(buf: &[u8], max: usize) -> Result<Option<Frame<'_>>, FrameError> {
    let Some(len) = header_len(buf) else {
        return Ok(None);
    };
    if len < 4 {
        return Err(FrameError::BadLength(len));
    }
    if len > max {
        return Err(FrameError::TooLarge(len, max));
    }
    Ok(buf.get(..=len).map(|bytes| Frame {
        tag: bytes[0],
        bytes,
    }))
}

/// Reserve room for the rest of the (already bounded) message that starts `buf`, so that it
/// is read in as few calls as possible.
pub fn reserve_rest(buf: &mut BytesMut) {
    if let Some(len) = header_len(buf) {
        if buf.len() < len + 1 {
            buf.reserve(len + 1 - buf.len());
        }
    }
}

/// The length field of the message (frontend or backend) that starts `buf`.
pub fn header_len(buf: &[u8]) -> Option<usize> {
    let h = buf.get(..5)?;
    Some(u32::from_be_bytes([h[1], h[2], h[3], h[4]]) as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_and_bound() {
        let b = BytesMut::from(&b"Q\0\0\0\x09abcd\0S\0\0\0\x04"[..]);
        let f = next_frame(&b, 1024).unwrap().unwrap();
        assert_eq!(f.tag, b'Q');
        assert_eq!(f.bytes, b"Q\0\0\0\x09abcd\0");
        let n = f.bytes.len();
        let g = next_frame(&b[n..], 1024).unwrap().unwrap();
        assert_eq!(g.tag, b'S');
        assert!(next_frame(&b[n + g.bytes.len()..], 1024).unwrap().is_none());
        let big = b"Q\x7f\0\0\0";
        assert!(matches!(
            next_frame(big, 1024),
            Err(FrameError::TooLarge(..))
        ));
        let bad = b"Q\0\0\0\x01";
        assert_eq!(next_frame(bad, 1024).unwrap_err(), FrameError::BadLength(1));
        let mut partial = BytesMut::from(&b"Q\0\0\0\x09ab"[..]);
        assert!(next_frame(&partial, 1024).unwrap().is_none());
        reserve_rest(&mut partial);
        assert!(partial.capacity() >= 10);
    }
}
