//! Splitting the client byte stream into protocol messages, with a size bound.

use bytes::BytesMut;

/// One frontend message: its tag and all of its bytes (tag and length included).
#[derive(Debug)]
pub struct Frame {
    pub tag: u8,
    pub bytes: BytesMut,
}

/// Framing errors; each ends the session.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("invalid message length {0}")]
    BadLength(usize),
    #[error("message of {0} bytes exceeds the limit of {1} bytes")]
    TooLarge(usize, usize),
}

/// Take the next complete message off `buf`, if there is one.
pub fn next_frame(buf: &mut BytesMut, max: usize) -> Result<Option<Frame>, FrameError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if len < 4 {
        return Err(FrameError::BadLength(len));
    }
    if len > max {
        return Err(FrameError::TooLarge(len, max));
    }
    if buf.len() < len + 1 {
        buf.reserve(len + 1 - buf.len());
        return Ok(None);
    }
    let tag = buf[0];
    Ok(Some(Frame {
        tag,
        bytes: buf.split_to(len + 1),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_and_bound() {
        let mut b = BytesMut::from(&b"Q\0\0\0\x09abcd\0S\0\0\0\x04"[..]);
        let f = next_frame(&mut b, 1024).unwrap().unwrap();
        assert_eq!(f.tag, b'Q');
        assert_eq!(f.bytes.len(), 10);
        assert_eq!(next_frame(&mut b, 1024).unwrap().unwrap().tag, b'S');
        assert!(next_frame(&mut b, 1024).unwrap().is_none());
        let mut big = BytesMut::from(&b"Q\x7f\0\0\0"[..]);
        assert!(matches!(
            next_frame(&mut big, 1024),
            Err(FrameError::TooLarge(..))
        ));
        let mut bad = BytesMut::from(&b"Q\0\0\0\x01"[..]);
        assert_eq!(
            next_frame(&mut bad, 1024).unwrap_err(),
            FrameError::BadLength(1)
        );
        let mut partial = BytesMut::from(&b"Q\0\0\0\x09ab"[..]);
        assert!(next_frame(&mut partial, 1024).unwrap().is_none());
    }
}
