//! Socket settings shared by the client side and the upstream side.

use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};
use tokio::net::TcpStream;

/// TCP_NODELAY (messages are written whole; Nagle would only hold back the tail of a reply)
/// and, unless `keepalive_s` is 0, keepalive probes after `keepalive_s` idle seconds, then
/// every `min(keepalive_s, 10)` seconds, so a vanished peer (a client whose network went away
/// in an open transaction, a PostgreSQL host that died) ends its session instead of holding it
/// for the kernel's two-hour default or forever.
pub fn tune(tcp: &TcpStream, keepalive_s: u64) -> std::io::Result<()> {
    tcp.set_nodelay(true)?;
    if keepalive_s > 0 {
        let keepalive = TcpKeepalive::new()
            .with_time(Duration::from_secs(keepalive_s))
            .with_interval(Duration::from_secs(keepalive_s.min(10)));
        SockRef::from(tcp).set_tcp_keepalive(&keepalive)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The options are set on a real connected socket, and 0 leaves keepalive off.
    #[tokio::test]
    async fn keepalive_and_nodelay_are_set() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        tune(&server, 45).unwrap();
        let s = SockRef::from(&server);
        assert!(s.keepalive().unwrap());
        assert_eq!(s.tcp_keepalive_time().unwrap(), Duration::from_secs(45));
        assert_eq!(s.tcp_keepalive_interval().unwrap(), Duration::from_secs(10));
        assert!(server.nodelay().unwrap());
        tune(&client, 0).unwrap();
        assert!(!SockRef::from(&client).keepalive().unwrap());
    }
}
