//! Issue 2: the relay is faithful for an unrestricted user; auth and sessions behave.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point
mod common;

use common::{code, expect_code, Env};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unrestricted_user_sees_same_results_as_direct() {
    let env = Env::start().await;
    let admin = env.connect("admin").await;
    let direct = env.direct().await;
    for sql in [
        "SELECT id, name, phone, credit_limit, created_at FROM customers ORDER BY id LIMIT 50",
        "SELECT 1.5::numeric, '{\"a\":1}'::jsonb, ARRAY[1,2,3], now()::date, '\\xdeadbeef'::bytea, 'x'::text",
        "SELECT count(*), sum(amount) FROM orders",
    ] {
        let a = admin.simple_query(sql).await.unwrap();
        let d = direct.simple_query(sql).await.unwrap();
        assert_eq!(format!("{a:?}"), format!("{d:?}"), "{sql}");
    }
    // extended protocol, binary results, parameters
    let stmt = "SELECT id, name, credit_limit::float8, created_at FROM customers WHERE id = $1";
    let a = admin.query_one(stmt, &[&7i32]).await.unwrap();
    let d = direct.query_one(stmt, &[&7i32]).await.unwrap();
    assert_eq!(a.get::<_, String>(1), d.get::<_, String>(1));
    assert_eq!(a.get::<_, f64>(2), d.get::<_, f64>(2));
    env.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_and_unknown_user_get_the_same_error() {
    let env = Env::start().await;
    let bad = common::connect_str(&format!(
        "host=127.0.0.1 port={} user=admin password=nope dbname=crm",
        env.port()
    ))
    .await
    .unwrap_err();
    let unknown = common::connect_str(&format!(
        "host=127.0.0.1 port={} user=nobody password=nope dbname=crm",
        env.port()
    ))
    .await
    .unwrap_err();
    assert_eq!(code(&bad), "28P01");
    assert_eq!(code(&unknown), "28P01");
    assert_eq!(
        common::message(&bad).replace("admin", "X"),
        common::message(&unknown).replace("nobody", "X")
    );
    // disabled user cannot log in either, same error
    let dis = env.try_connect("dis").await.unwrap_err();
    assert_eq!(code(&dis), "28P01");
}

async fn raw_startup(port: u16, params: &[(&str, &str)]) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(&startup_packet(3, 0, params)).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), s.read_to_end(&mut out)).await;
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_refusals_are_clean_errors() {
    let env = Env::start().await;
    let port = env.port();
    let r = raw_startup(
        port,
        &[
            ("user", "admin"),
            ("database", "crm"),
            ("replication", "database"),
        ],
    )
    .await;
    assert!(
        String::from_utf8_lossy(&r).contains("0A000"),
        "replication refused: {r:?}"
    );
    let r = raw_startup(
        port,
        &[
            ("user", "admin"),
            ("database", "crm"),
            ("client_encoding", "LATIN1"),
        ],
    )
    .await;
    assert!(
        String::from_utf8_lossy(&r).contains("22021"),
        "encoding refused"
    );
    let r = raw_startup(port, &[("user", "admin"), ("database", "other")]).await;
    assert!(
        String::from_utf8_lossy(&r).contains("3D000"),
        "unknown database"
    );
    // garbage and oversized packets only hurt their own connection
    for junk in [
        &b"\x00\x00\x00\x08garbage!"[..],
        &b"\x7f\xff\xff\xff"[..],
        &b"GET / HTTP/1.1\r\n\r\n"[..],
    ] {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let _ = s.write_all(junk).await;
        let mut sink = Vec::new();
        let _ =
            tokio::time::timeout(std::time::Duration::from_secs(3), s.read_to_end(&mut sink)).await;
    }
    // a half-open connection does not block others
    let _idle = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let admin = env.connect("admin").await;
    assert_eq!(
        admin
            .query_one("SELECT 1", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        1
    );
}

/// Settings a user may change (`SET`) reach PostgreSQL from the startup packet, also from
/// `options` (as libpq's PGOPTIONS sends them); what pgveil leaves out (search_path, role,
/// server switches) is named in a warning after login, without the values; a bad value gets
/// PostgreSQL's own error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_settings_are_passed_on_or_named() {
    use futures::StreamExt;
    let env = Env::start().await;
    for user in ["admin", "rita"] {
        let mut cfg: tokio_postgres::Config = env.conn_str(user).parse().unwrap();
        cfg.options(
            "-c statement_timeout=1234 --lock-timeout=2345 -c search_path=nowhere_x -c role=postgres -d 5",
        );
        let (client, mut connection) = cfg.connect(tokio_postgres::NoTls).await.unwrap();
        let (tx, mut notices) = futures::channel::mpsc::unbounded();
        let driver = tokio::spawn(async move {
            let mut stream = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(Ok(m)) = stream.next().await {
                if let tokio_postgres::AsyncMessage::Notice(n) = m {
                    let _ = tx.unbounded_send(n);
                }
            }
        });
        let show = |name: &'static str| {
            let client = &client;
            async move {
                common::simple_rows(client, &format!("SHOW {name}"))
                    .await
                    .unwrap()[0][0]
                    .clone()
                    .unwrap()
            }
        };
        assert_eq!(show("statement_timeout").await, "1234ms", "{user}");
        assert_eq!(show("lock_timeout").await, "2345ms", "{user}");
        assert_eq!(show("search_path").await, "public", "{user}: pinned");
        let role: String = client
            .query_one("SELECT current_user::text", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(role, pgveil::demo::SERVICE_USER, "{user}");
        let warning = tokio::time::timeout(std::time::Duration::from_secs(10), notices.next())
            .await
            .expect("a warning")
            .unwrap();
        assert_eq!(warning.severity(), "WARNING");
        assert_eq!(warning.code().code(), "01000");
        assert_eq!(
            warning.message(),
            "pgveil did not pass these startup parameters on to PostgreSQL: \
             options -c search_path, options -c role, options -d"
        );
        assert!(!warning.message().contains("nowhere_x") && !warning.message().contains('5'));
        drop(client);
        driver.await.unwrap();
    }
    // the warning comes where PostgreSQL's own startup warnings come: before ReadyForQuery
    let raw =
        common::RawClient::login_with(env.port(), "rita", &[("options", "-c search_path=x")]).await;
    assert_eq!(
        raw.login_notices,
        ["pgveil did not pass these startup parameters on to PostgreSQL: options -c search_path"]
    );
    // PostgreSQL's refusal of a bad value reaches the client as it would without pgveil
    let mut cfg: tokio_postgres::Config = env.conn_str("rita").parse().unwrap();
    cfg.options("-c statement_timeout=soon");
    let e = cfg
        .connect(tokio_postgres::NoTls)
        .await
        .err()
        .expect("refused");
    assert_eq!(code(&e), "22023", "{e}");
    assert_eq!(
        common::message(&e),
        "invalid value for parameter \"statement_timeout\": \"soon\""
    );
    // a client that asks for nothing pgveil leaves out gets no warning
    let (client, mut connection) =
        tokio_postgres::connect(&env.conn_str("admin"), tokio_postgres::NoTls)
            .await
            .unwrap();
    let poll = futures::future::poll_fn(|cx| connection.poll_message(cx));
    let first = tokio::select! {
        m = poll => format!("{m:?}"),
        r = client.simple_query("SELECT 1") => { r.unwrap(); String::new() }
    };
    assert!(
        first.is_empty(),
        "no message before the query's answer: {first}"
    );
}

/// The next message (tag, body) from a raw stream.
async fn raw_message(s: &mut tokio::net::TcpStream) -> (u8, Vec<u8>) {
    use tokio::io::AsyncReadExt;
    let read = async {
        let tag = s.read_u8().await.unwrap();
        let len = s.read_u32().await.unwrap() as usize;
        let mut body = vec![0; len - 4];
        s.read_exact(&mut body).await.unwrap();
        (tag, body)
    };
    tokio::time::timeout(std::time::Duration::from_secs(30), read)
        .await
        .expect("a message")
}

/// A startup packet of protocol 3.`minor` (or `major`.`minor`).
fn startup_packet(major: u16, minor: u16, params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&major.to_be_bytes());
    body.extend_from_slice(&minor.to_be_bytes());
    for (k, v) in params {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut msg = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    msg.extend_from_slice(&body);
    msg
}

/// Protocol negotiation as PostgreSQL 18 does it: 3.2 accepted as asked (with its longer
/// cancel key, which works), a newer minor version or `_pq_.*` options answered with
/// NegotiateProtocolVersion, GSSAPI and TLS requests refused when not served, another major
/// version refused with 0A000.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_versions_are_negotiated_like_postgresql() {
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
    use postgres_protocol::message::frontend;
    use tokio::io::AsyncWriteExt;
    let env = Env::start().await;
    let port = env.port();
    let login = [("user", "admin"), ("database", "crm")];
    let connect = || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap()
    };
    // (minor, options) -> the NegotiateProtocolVersion expected first, if any
    type Case = (
        u16,
        &'static [(&'static str, &'static str)],
        Option<(u32, Vec<&'static str>)>,
    );
    let cases: [Case; 4] = [
        (0, &[], None),
        (2, &[], None),
        (9999, &[], Some((0x0003_0002, vec![]))),
        (
            0,
            &[("_pq_.b_option", "on"), ("_pq_.a_option", "1")],
            Some((0x0003_0000, vec!["_pq_.a_option", "_pq_.b_option"])),
        ),
    ];
    for (minor, options, negotiated) in cases {
        let mut s = connect().await;
        let params: Vec<(&str, &str)> = login.iter().chain(options).copied().collect();
        s.write_all(&startup_packet(3, minor, &params))
            .await
            .unwrap();
        let (mut tag, mut body) = raw_message(&mut s).await;
        if let Some((newest, names)) = negotiated {
            assert_eq!(
                tag, b'v',
                "3.{minor} {options:?}: NegotiateProtocolVersion first"
            );
            assert_eq!(u32::from_be_bytes(body[0..4].try_into().unwrap()), newest);
            let count = u32::from_be_bytes(body[4..8].try_into().unwrap()) as usize;
            let listed: Vec<String> = body[8..]
                .split(|b| *b == 0)
                .filter(|n| !n.is_empty())
                .map(|n| String::from_utf8_lossy(n).into_owned())
                .collect();
            assert_eq!(count, names.len());
            assert_eq!(listed, names);
            (tag, body) = raw_message(&mut s).await;
        }
        assert_eq!(tag, b'R', "3.{minor} {options:?}: then authentication");
        assert_eq!(&body[0..4], &10u32.to_be_bytes(), "SASL");
    }
    // GSSAPI encryption and TLS (this server has no certificate) refused with 'N', in either
    // order, as PostgreSQL refuses them; the login goes on in plain text
    for codes in [[80_877_104u32, 80_877_103], [80_877_103, 80_877_104]] {
        let mut s = connect().await;
        for code in codes {
            let mut request = 8u32.to_be_bytes().to_vec();
            request.extend_from_slice(&code.to_be_bytes());
            s.write_all(&request).await.unwrap();
            let mut answer = [0u8; 1];
            tokio::io::AsyncReadExt::read_exact(&mut s, &mut answer)
                .await
                .unwrap();
            assert_eq!(&answer, b"N", "request {code} refused");
        }
        s.write_all(&startup_packet(3, 0, &login)).await.unwrap();
        let (tag, body) = raw_message(&mut s).await;
        assert_eq!((tag, &body[0..4]), (b'R', &10u32.to_be_bytes()[..]), "SASL");
    }
    let mut s = connect().await;
    s.write_all(&startup_packet(2, 0, &login)).await.unwrap();
    let (tag, body) = raw_message(&mut s).await;
    assert_eq!(tag, b'E');
    let body = String::from_utf8_lossy(&body);
    assert!(
        body.contains("SFATAL\0") && body.contains("C0A000\0"),
        "{body}"
    );
    assert!(
        body.contains("Munsupported frontend protocol 2.0: server supports 3.0 to 3.2\0"),
        "{body}"
    );

    // a whole 3.2 session: log in, take the (longer) cancel key, cancel a query with it
    let mut s = connect().await;
    s.write_all(&startup_packet(3, 2, &login)).await.unwrap();
    let password = pgveil::demo::password("admin");
    let mut scram = ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
    let mut key = None;
    loop {
        let (tag, body) = raw_message(&mut s).await;
        let mut out = bytes::BytesMut::new();
        match (
            tag,
            body.get(0..4)
                .map(|c| u32::from_be_bytes(c.try_into().unwrap())),
        ) {
            (b'R', Some(10)) => {
                frontend::sasl_initial_response("SCRAM-SHA-256", scram.message(), &mut out).unwrap()
            }
            (b'R', Some(11)) => {
                scram.update(&body[4..]).unwrap();
                frontend::sasl_response(scram.message(), &mut out).unwrap();
            }
            (b'R', Some(12)) => scram.finish(&body[4..]).unwrap(),
            (b'K', _) => key = Some(body),
            (b'Z', _) => break,
            (b'E', _) => panic!("3.2 login failed: {}", String::from_utf8_lossy(&body)),
            _ => {}
        }
        s.write_all(&out).await.unwrap();
    }
    let key = key.expect("BackendKeyData");
    assert!(
        key.len() > 8,
        "3.2 cancel keys are longer than 4 bytes: {}",
        key.len() - 4
    );
    let mut out = bytes::BytesMut::new();
    frontend::query("SELECT pg_sleep(30)", &mut out).unwrap();
    s.write_all(&out).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let mut cancel = ((key.len() + 8) as u32).to_be_bytes().to_vec();
    cancel.extend_from_slice(&80_877_102u32.to_be_bytes());
    cancel.extend_from_slice(&key); // pid and the whole secret
    connect().await.write_all(&cancel).await.unwrap();
    loop {
        let (tag, body) = raw_message(&mut s).await;
        if tag == b'E' {
            assert!(String::from_utf8_lossy(&body).contains("57014"), "{body:?}");
            break;
        }
        assert_ne!(tag, b'Z', "the query was cancelled, not finished");
    }
}

/// The cancel key a client gets names its PostgreSQL backend, as `pg_backend_pid()` does
/// (psql's `%p`, libpq's PQbackendPID, tools that match pg_stat_activity); two open sessions
/// never share one. The login's ParameterStatus messages come in PostgreSQL's order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cancel_key_names_the_postgresql_backend() {
    use postgres_protocol::message::backend::Message;
    let env = Env::start().await;
    let mut pids = Vec::new();
    let mut open = Vec::new();
    for _ in 0..3 {
        let mut raw = common::RawClient::login(env.port(), "admin").await;
        let mut out = bytes::BytesMut::new();
        postgres_protocol::message::frontend::query("SELECT pg_backend_pid()", &mut out).unwrap();
        raw.send(&out).await;
        let backend = loop {
            if let Message::DataRow(row) = raw.next().await {
                use fallible_iterator::FallibleIterator;
                let range = row.ranges().next().unwrap().unwrap().unwrap();
                let text = String::from_utf8_lossy(&row.buffer()[range]).into_owned();
                break text.parse::<i32>().unwrap();
            }
        };
        raw.until_ready().await;
        assert_eq!(raw.pid, backend, "BackendKeyData names the backend");
        // the server's parameters come in PostgreSQL 15's order (by name, case-insensitively)
        let mut ordered = raw.login_parameters.clone();
        ordered.sort_by_key(|n| n.to_lowercase());
        assert_eq!(raw.login_parameters, ordered);
        assert!(
            raw.login_parameters.len() > 10,
            "{:?}",
            raw.login_parameters
        );
        pids.push(raw.pid);
        open.push(raw);
    }
    pids.sort();
    pids.dedup();
    assert_eq!(pids.len(), 3, "one key per open session: {pids:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_features_pass_through() {
    let env = Env::start().await;
    let mut admin = env.connect("admin").await;
    let direct = env.direct().await;
    // portals with row limits inside a transaction
    let tx = admin.transaction().await.unwrap();
    let stmt = tx
        .prepare("SELECT id FROM customers ORDER BY id")
        .await
        .unwrap();
    let portal = tx.bind(&stmt, &[]).await.unwrap();
    let first = tx.query_portal(&portal, 10).await.unwrap();
    let second = tx.query_portal(&portal, 10).await.unwrap();
    assert_eq!(first.len(), 10);
    assert_eq!(second[0].get::<_, i32>(0), 11);
    // savepoints; a failed statement aborts until rollback to savepoint
    tx.batch_execute("SAVEPOINT s1").await.unwrap();
    assert!(tx.batch_execute("SELECT 1/0").await.is_err());
    assert_eq!(
        code(&tx.batch_execute("SELECT 1").await.unwrap_err()),
        "25P02"
    );
    tx.batch_execute("ROLLBACK TO SAVEPOINT s1").await.unwrap();
    tx.commit().await.unwrap();
    // pipelined queries (tokio-postgres pipelines concurrent futures)
    let (a, b, c) = tokio::join!(
        admin.query_one("SELECT 1::int4", &[]),
        admin.query_one("SELECT 2::int4", &[]),
        admin.query_one("SELECT 3::int4", &[])
    );
    assert_eq!(
        (
            a.unwrap().get::<_, i32>(0),
            b.unwrap().get::<_, i32>(0),
            c.unwrap().get::<_, i32>(0)
        ),
        (1, 2, 3)
    );
    // COPY out in text, csv and binary: byte-identical to direct
    use futures::SinkExt;
    for q in [
        "COPY (SELECT * FROM orders ORDER BY id LIMIT 500) TO STDOUT",
        "COPY (SELECT * FROM orders ORDER BY id LIMIT 500) TO STDOUT (FORMAT csv, HEADER)",
        "COPY (SELECT * FROM orders ORDER BY id LIMIT 500) TO STDOUT (FORMAT binary)",
    ] {
        let a = common::copy_out_bytes(&admin, q).await;
        let d = common::copy_out_bytes(&direct, q).await;
        assert_eq!(a, d, "{q}");
    }
    // COPY in
    admin
        .batch_execute("CREATE TEMP TABLE t (a int, b text)")
        .await
        .unwrap();
    let sink = admin
        .copy_in("COPY t FROM STDIN (FORMAT csv)")
        .await
        .unwrap();
    futures::pin_mut!(sink);
    sink.send(bytes::Bytes::from_static(b"1,one\n2,two\n"))
        .await
        .unwrap();
    assert_eq!(sink.finish().await.unwrap(), 2);
    assert_eq!(common::scalar(&admin, "SELECT count(*) FROM t").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_reaches_an_idle_client_and_cancel_works() {
    let env = Env::start().await;
    let (client, mut conn) = tokio_postgres::connect(&env.conn_str("admin"), tokio_postgres::NoTls)
        .await
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut s = futures::stream::poll_fn(move |cx| conn.poll_message(cx));
        use futures::StreamExt;
        while let Some(Ok(m)) = s.next().await {
            if let tokio_postgres::AsyncMessage::Notification(n) = m {
                let _ = tx.send(n.payload().to_owned());
            }
        }
    });
    client.batch_execute("LISTEN events").await.unwrap();
    let direct = env.direct().await;
    direct
        .batch_execute("NOTIFY events, 'hello'")
        .await
        .unwrap();
    let got = tokio::time::timeout(std::time::Duration::from_secs(10), rx.recv())
        .await
        .unwrap();
    assert_eq!(got.as_deref(), Some("hello"));
    // cancel a long query through pgveil
    let token = client.cancel_token();
    let sleeper = tokio::spawn(async move { client.batch_execute("SELECT pg_sleep(30)").await });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let r = tokio::time::timeout(std::time::Duration::from_secs(20), sleeper)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(code(&r.unwrap_err()), "57014");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limit_and_oversized_messages() {
    let env = Env::start_with(|c| {
        c.server.max_connections = 2;
        c.server.max_message_bytes = 4096;
        c.server.max_query_bytes = 1024;
    })
    .await;
    let a = env.connect("admin").await;
    let b = env.connect("rita").await;
    let e = env.try_connect("maria").await.unwrap_err();
    assert_eq!(code(&e), "53300");
    // an oversized message after login: FATAL 08P01 for that session only
    let huge = format!("SELECT '{}'", "x".repeat(10_000));
    let e = expect_code(&a, &huge, "08P01").await;
    let msg = e.as_db_error().map(|d| d.message().to_owned());
    assert!(msg.unwrap().contains("exceeds the limit"), "{e:?}");
    assert!(a.simple_query("SELECT 1").await.is_err(), "session ended");
    assert!(
        b.simple_query("SELECT 1").await.is_ok(),
        "other sessions unaffected"
    );
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    env.connect("maria").await;
}

/// A Query or Parse message whose text is not UTF-8 is answered as PostgreSQL answers it
/// (22021) and the session goes on: forwarded as it is for an unrestricted user, refused by
/// pgveil for a restricted one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_that_is_not_utf8_is_an_error_not_a_disconnect() {
    let env = Env::start().await;
    let message = |tag: u8, parts: &[&[u8]]| {
        let body: Vec<u8> = parts.concat();
        let mut m = vec![tag];
        m.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
        m.extend_from_slice(&body);
        m
    };
    let bad_query = message(b'Q', &[b"SELECT '\xff'", b"\0"]);
    let bad_parse = message(b'P', &[b"\0", b"SELECT '\xc3\x28'", b"\0", b"\0\0"]);
    let sync = message(b'S', &[]);
    let good_query = message(b'Q', &[b"SELECT 1", b"\0"]);
    for user in ["admin", "rita"] {
        let mut raw = common::RawClient::login(env.port(), user).await;
        raw.send(&bad_query).await;
        assert_eq!(raw.until_ready().await, ["E22021", "ZI"], "{user}: Query");
        raw.send(&[bad_parse.clone(), sync.clone()].concat()).await;
        assert_eq!(raw.until_ready().await, ["E22021", "ZI"], "{user}: Parse");
        raw.send(&good_query).await;
        assert_eq!(
            raw.until_ready().await,
            ["T", "D", "C", "ZI"],
            "{user}: the session goes on"
        );
    }
}

/// The handshake timeout ends connections that stall before a session starts (the session
/// threads run it without a time driver of their own: `pgveil::timers`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_handshakes_are_closed_after_the_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let env = Env::start_with(|c| {
        c.server.handshake_timeout_ms = 300;
        c.upstream.connect_timeout_ms = 250; // (must be below the handshake timeout)
    })
    .await;
    let port = env.port();
    // nothing sent; half a startup packet; a startup packet and then no password
    let mut startup = bytes::BytesMut::new();
    postgres_protocol::message::frontend::startup_message(
        [("user", "admin"), ("database", "crm")],
        &mut startup,
    )
    .unwrap();
    for sent in [&b""[..], &b"\0\0\0\x08\0\x04"[..], &startup[..]] {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        s.write_all(sent).await.unwrap();
        let mut got = Vec::new();
        // (the guard only keeps a broken build from hanging the suite)
        let closed =
            tokio::time::timeout(std::time::Duration::from_secs(60), s.read_to_end(&mut got)).await;
        assert!(
            matches!(closed, Ok(Ok(_))),
            "pgveil closes a stalled handshake ({} bytes sent)",
            sent.len()
        );
        if sent.len() > 6 {
            assert_eq!(
                got.first(),
                Some(&b'R'),
                "asked for a password, then closed"
            );
        }
    }
    let admin = env.connect("admin").await;
    let one: i32 = admin.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restart_is_survived() {
    let env = Env::start().await;
    let admin = env.connect("admin").await;
    env.pg.stop().unwrap();
    assert!(admin.simple_query("SELECT 1").await.is_err());
    let e = env.try_connect("admin").await.unwrap_err();
    assert_eq!(code(&e), "08006", "{e}");
    env.pg.pg_ctl_start().unwrap();
    let again = env.connect("admin").await;
    assert_eq!(
        again
            .query_one("SELECT 1", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        1
    );
    // the policy reloader reconnects too: restricted users are still enforced
    let n = customers_seen(&env.connect("rita").await).await;
    assert!(n < 2000);
}

/// A TCP forwarder in front of PostgreSQL that can be told to swallow new connections: it
/// accepts them and never answers, like a PostgreSQL that hangs or a firewall that drops.
struct BlackHole {
    port: u16,
    swallow: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Swallowed connections the other side (pgveil) has closed.
    closed: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl BlackHole {
    /// Start forwarding to `pg_port` (call inside the runtime).
    fn start(pg_port: u16) -> BlackHole {
        use std::sync::atomic::Ordering::SeqCst;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let hole = BlackHole {
            port,
            swallow: Default::default(),
            closed: Default::default(),
        };
        let (swallow, closed) = (hole.swallow.clone(), hole.closed.clone());
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        tokio::spawn(async move {
            while let Ok((mut from, _)) = listener.accept().await {
                let (swallow, closed) = (swallow.load(SeqCst), closed.clone());
                tokio::spawn(async move {
                    if swallow {
                        // read (and drop) whatever comes until the other side gives up
                        let _ = tokio::io::copy(&mut from, &mut tokio::io::sink()).await;
                        closed.fetch_add(1, SeqCst);
                    } else if let Ok(mut to) =
                        tokio::net::TcpStream::connect(("127.0.0.1", pg_port)).await
                    {
                        let _ = tokio::io::copy_bidirectional(&mut from, &mut to).await;
                    }
                });
            }
        });
        hole
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_never_answers_times_out_cleanly() {
    use std::sync::atomic::Ordering::SeqCst;
    use std::time::Duration;
    let mut hole = None;
    let env = Env::start_with(|c| {
        let h = BlackHole::start(c.upstream.port);
        c.upstream.port = h.port;
        c.upstream.connect_timeout_ms = 300;
        hole = Some(h);
    })
    .await;
    let hole = hole.unwrap();
    let admin = env.connect("admin").await;
    hole.swallow.store(true, SeqCst);
    // (the guards only keep a broken build from hanging the suite)
    let guard = Duration::from_secs(60);
    for user in ["admin", "rita"] {
        let e = tokio::time::timeout(guard, env.try_connect(user))
            .await
            .expect("the upstream connect timeout fires")
            .unwrap_err();
        assert_eq!(code(&e), "08006", "{user}: {e}");
        assert_eq!(
            common::message(&e),
            "could not connect to the upstream PostgreSQL server"
        );
    }
    // pgveil gave up on the silent connections (closed them), and nothing else was affected
    tokio::time::timeout(guard, async {
        while hole.closed.load(SeqCst) < 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("pgveil closes the upstream connections it gave up on");
    let one: i32 = admin.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1, "a session that was already connected goes on");
    hole.swallow.store(false, SeqCst);
    let n = customers_seen(&env.connect("rita").await).await;
    assert!(n > 0 && n < 2000, "rita is enforced again: {n}");
}

/// How many customers a client sees (fewer than all 2,000 for a restricted user).
async fn customers_seen(c: &tokio_postgres::Client) -> i64 {
    common::scalar(c, "SELECT count(*) FROM customers").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_meta_commands_work() {
    let env = Env::start().await;
    for user in ["admin", "rita"] {
        let (ok, out, err) = env.psql(user, &["-c", "\\d customers"], None);
        assert!(ok, "{user} \\d: {err}");
        assert!(out.contains("owner"), "{out}");
        let (ok, out, err) = env.psql(user, &["-c", "\\dt+"], None);
        assert!(ok, "{user} \\dt+: {err}");
        assert!(out.contains("customers"), "{out}");
    }
    let (ok, out, err) = env.psql(
        "maria",
        &[
            "-c",
            "\\copy (SELECT id FROM customers ORDER BY id LIMIT 3) TO STDOUT",
        ],
        None,
    );
    assert!(ok, "{err}");
    assert_eq!(out.lines().count(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_results_stream_without_buffering() {
    let env = Env::start().await;
    let admin = env.connect("admin").await;
    let rss = || -> u64 {
        std::fs::read_to_string("/proc/self/status")
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0)
    };
    let before = rss();
    let params: Vec<i32> = vec![];
    let rows = admin
        .query_raw(
            "SELECT g, repeat('x', 100) FROM generate_series(1, 1000000) g",
            params,
        )
        .await
        .unwrap();
    use futures::StreamExt;
    futures::pin_mut!(rows);
    let mut n = 0u64;
    let mut peak = before;
    while let Some(r) = rows.next().await {
        r.unwrap();
        n += 1;
        if n % 100_000 == 0 {
            peak = peak.max(rss());
        }
    }
    assert_eq!(n, 1_000_000);
    // ~130 MB went through; the process (client + pgveil) must not have held it.
    assert!(
        peak - before < 64 * 1024,
        "RSS grew by {} kB",
        peak - before
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_channel_binding_and_require_tls() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = ca_and_localhost_certificate(dir.path());
    let (c2, k2) = (cert.clone(), key.clone());
    let env = Env::start_with(move |c| {
        c.tls = Some(pgveil::config::TlsConfig {
            cert: c2,
            key: k2,
            require_tls: true,
        });
        c.server.session_threads = 2;
    })
    .await;
    let base = format!("host=127.0.0.1 port={} user=rita dbname=crm", env.port());
    // a TLS session is never moved between session threads, however often that is asked
    let server = env.running.server.clone();
    let mut psql = std::process::Command::new(env.pg.bin_dir().join("psql"));
    psql.arg(format!("{base} sslmode=require"))
        .args([
            "-X",
            "-At",
            "-c",
            "SELECT pg_sleep(0.5)",
            "-c",
            "SELECT count(*) FROM products",
        ])
        .env("PGPASSWORD", pgveil::demo::password("rita"));
    let running = tokio::task::spawn_blocking(move || psql.output());
    let asking = async {
        loop {
            server.move_sessions(0, 1, 100);
            server.move_sessions(1, 0, 100);
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    };
    let out = tokio::select! {
        out = running => out.unwrap().unwrap(),
        () = asking => unreachable!(),
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "200");
    assert_eq!(server.sessions_moved(), 0);
    let mut cmd = std::process::Command::new(env.pg.bin_dir().join("psql"));
    cmd.arg(format!("{base} sslmode=require channel_binding=require"))
        .args(["-X", "-At", "-c", "SELECT count(*) FROM products"])
        .env("PGPASSWORD", pgveil::demo::password("rita"));
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "SCRAM-SHA-256-PLUS over TLS: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "200");
    let out = std::process::Command::new(env.pg.bin_dir().join("psql"))
        .arg(format!("{base} sslmode=disable"))
        .args(["-X", "-At", "-c", "SELECT 1"])
        .env("PGPASSWORD", pgveil::demo::password("rita"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("requires TLS"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    direct_tls_logins(env.port(), &ca).await;
}

/// Direct TLS (PostgreSQL 17's `sslnegotiation=direct`): TLS from the first byte with ALPN
/// "postgresql" leads to the login, and the startup packet inside is checked as in plain
/// text (another major version: 0A000); without ALPN no login starts.
async fn direct_tls_logins(port: u16, ca: &std::path::Path) {
    use pgwire::tokio::tokio_rustls::{rustls, TlsConnector};
    use rustls::pki_types::{pem::PemObject, CertificateDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let connector = |alpn: bool| {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(ca).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        if alpn {
            config.alpn_protocols = vec![b"postgresql".to_vec()];
        }
        TlsConnector::from(std::sync::Arc::new(config))
    };
    let login = [("user", "rita"), ("database", "crm")];
    for (alpn, major, expected) in [(true, 3, b'R'), (true, 2, b'E'), (false, 3, 0)] {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        let mut tls = connector(alpn).connect(name, tcp).await.unwrap();
        tls.write_all(&startup_packet(major, 0, &login))
            .await
            .unwrap();
        tls.flush().await.unwrap();
        // everything up to the end of the connection (or the first 9 bytes of a SASL request)
        let mut answer = Vec::new();
        let mut chunk = [0u8; 512];
        while !(answer.first() == Some(&b'R') && answer.len() >= 9) {
            let read = tls.read(&mut chunk);
            match tokio::time::timeout(std::time::Duration::from_secs(10), read).await {
                Ok(Ok(n)) if n > 0 => answer.extend_from_slice(&chunk[..n]),
                _ => break,
            }
        }
        let text = String::from_utf8_lossy(&answer);
        match expected {
            b'R' => {
                assert_eq!(answer.first(), Some(&b'R'), "{text}");
                assert_eq!(
                    answer.get(5..9),
                    Some(&10u32.to_be_bytes()[..]),
                    "SASL: {text}"
                );
            }
            b'E' => assert!(text.contains("C0A000\0"), "{text}"),
            _ => assert!(answer.is_empty(), "no login without ALPN: {text}"),
        }
    }
}

/// Shutdown: no new connections, open sessions go on for the grace period, then every
/// session still open ends as with PostgreSQL's fast shutdown: the client gets FATAL 57P01
/// (a query in flight fails with it, an idle client reads it), its PostgreSQL session ends
/// (an open transaction rolls back), and pgveil's accept loop returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_sessions_finish_then_ends_them_with_57p01() {
    use fallible_iterator::FallibleIterator;
    use postgres_protocol::message::backend::Message;
    use std::time::Duration;
    let mut env = Env::start_with(|c| c.server.shutdown_grace_ms = 1_500).await;
    let direct = env.direct().await;
    let probe = format!("{} application_name=shutdown_probe", env.conn_str("admin"));
    let admin = common::connect_str(&probe).await.unwrap();
    admin
        .batch_execute("CREATE TABLE shutdown_probe(a int)")
        .await
        .unwrap();
    let in_tx = common::connect_str(&probe).await.unwrap();
    in_tx
        .batch_execute("BEGIN; INSERT INTO shutdown_probe VALUES (1)")
        .await
        .unwrap();
    let sleeper = common::connect_str(&probe).await.unwrap();
    let mut idle = common::RawClient::login(env.port(), "admin").await;
    let upstream_sessions = || async {
        let n: i64 = direct
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'shutdown_probe'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        n
    };
    assert_eq!(upstream_sessions().await, 3);

    env.running.server.shutdown.cancel();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // the grace period: open sessions keep working, new connections are refused
    let one: i32 = admin.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
    assert!(env.try_connect("admin").await.is_err());
    let slept = tokio::spawn(async move { sleeper.simple_query("SELECT pg_sleep(300)").await });

    // (the guards only keep a broken build from hanging the suite)
    let guard = Duration::from_secs(60);
    tokio::time::timeout(guard, &mut env.running.task)
        .await
        .expect("pgveil stops after the grace period")
        .unwrap();
    let e = slept.await.unwrap().unwrap_err();
    assert_eq!(code(&e), "57P01", "{e}");
    assert_eq!(
        common::message(&e),
        "terminating connection because pgveil is shutting down"
    );
    let Message::ErrorResponse(fatal) = idle.next().await else {
        panic!("the idle client is told why")
    };
    let fields: Vec<(u8, String)> = fatal
        .fields()
        .map(|f| {
            Ok((
                f.type_(),
                String::from_utf8_lossy(f.value_bytes()).into_owned(),
            ))
        })
        .collect()
        .unwrap();
    assert!(fields.contains(&(b'S', "FATAL".into())), "{fields:?}");
    assert!(fields.contains(&(b'C', "57P01".into())), "{fields:?}");
    assert!(admin.is_closed() || admin.simple_query("SELECT 1").await.is_err());
    // their PostgreSQL sessions are gone, the open transaction with them
    tokio::time::timeout(guard, async {
        while upstream_sessions().await > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the PostgreSQL sessions end");
    let rows: i64 = common::scalar(&direct, "SELECT count(*) FROM shutdown_probe").await;
    assert_eq!(rows, 0, "the open transaction was rolled back");
    drop(in_tx);
}

/// `pgveil serve` as its own process, with a `trace` log in a file.
struct Served {
    child: std::process::Child,
    port: u16,
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Served {
    /// Serve `env`'s PostgreSQL with this grace period.
    fn start(env: &Env, grace_ms: u64) -> Served {
        let dir = tempfile::tempdir().unwrap();
        let port = pgveil::embedded_pg::free_port().unwrap();
        let config = dir.path().join("pgveil.toml");
        std::fs::write(
            &config,
            format!(
                "[server]\nlisten = \"127.0.0.1:{port}\"\nshutdown_grace_ms = {grace_ms}\n\
                 [upstream]\nhost = \"127.0.0.1\"\nport = {}\ndatabase = \"crm\"\nuser = \"{}\"\npassword = \"{}\"\n\
                 [log]\nlevel = \"trace\"\n",
                env.pg.port(),
                pgveil::demo::SERVICE_USER,
                pgveil::demo::SERVICE_PASSWORD
            ),
        )
        .unwrap();
        let log = dir.path().join("pgveil.log");
        let file = std::fs::File::create(&log).unwrap();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_pgveil"))
            .args(["serve", "--config"])
            .arg(&config)
            .env_remove("RUST_LOG")
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap();
        Served {
            child,
            port,
            log,
            _dir: dir,
        }
    }

    /// Log in with `conn`, retrying while pgveil starts (or a password change is loaded).
    async fn login(&self, conn: &str) -> tokio_postgres::Client {
        for _ in 0..600 {
            if let Ok(c) = common::connect_str(conn).await {
                return c;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        panic!("no login through pgveil serve: {conn}");
    }

    fn terminate(&self) {
        let term = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(term.success());
    }

    /// Wait for pgveil to exit (successfully); its log.
    async fn exit(mut self) -> String {
        // (the guard only keeps a broken build from hanging the suite)
        let status = tokio::time::timeout(
            std::time::Duration::from_secs(60),
            tokio::task::spawn_blocking(move || self.child.wait()),
        )
        .await
        .expect("pgveil exits")
        .unwrap()
        .unwrap();
        assert!(status.success(), "{status}");
        std::fs::read_to_string(&self.log).unwrap()
    }
}

/// `pgveil serve` as a user runs it: logging at the most verbose level (`trace`) shows one
/// span per session (client address, user, application name) but no password, verifier,
/// literal or parameter value; SIGTERM stops new connections, lets an open session go on for
/// the grace period, then ends it and exits successfully.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_logs_no_secrets_and_stops_on_sigterm() {
    use std::time::Duration;
    let env = Env::start().await;
    let served = Served::start(&env, 2_000);
    let port = served.port;
    let conn = |user: &str, password: &str| {
        format!("host=127.0.0.1 port={port} user={user} password={password} dbname=crm application_name=LogProbeApp")
    };
    let admin_pw = pgveil::demo::password("admin");
    let admin = served.login(&conn("admin", &admin_pw)).await;

    // secrets and values of every kind go through the session
    let new_pw = "Rotated-Secret-2026x";
    admin
        .batch_execute(&format!("ALTER USER rita PASSWORD '{new_pw}'"))
        .await
        .unwrap();
    let wrong = common::connect_str(&conn("rita", "Wrong-Password-1234")).await;
    assert!(wrong.is_err());
    // (the new password takes effect with the next catalog reload)
    let rita = served.login(&conn("rita", new_pw)).await;
    let values = [
        "LiteralProbe-4711",
        "ParamProbe-0815",
        "RefusedProbe-99",
        "AdminLiteral-2718",
        "AdminParam-31337",
    ];
    rita.simple_query(&format!(
        "SELECT count(*) FROM customers WHERE name = '{}'",
        values[0]
    ))
    .await
    .unwrap();
    rita.query(
        "SELECT count(*) FROM customers WHERE name = $1",
        &[&values[1]],
    )
    .await
    .unwrap();
    let refused = rita
        .simple_query(&format!(
            "SELECT * FROM internal_salaries WHERE note = '{}'",
            values[2]
        ))
        .await;
    assert!(refused.is_err());
    admin
        .simple_query(&format!("SELECT '{}'", values[3]))
        .await
        .unwrap();
    admin.query("SELECT $1::text", &[&values[4]]).await.unwrap();
    drop(rita);

    // SIGTERM: the open session goes on for the grace period, new logins are refused
    served.terminate();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let one: i32 = admin.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1, "an open session goes on during the grace period");
    assert!(common::connect_str(&conn("admin", &admin_pw))
        .await
        .is_err());
    let text = served.exit().await;
    let e = admin.simple_query("SELECT 1").await.unwrap_err();
    assert!(admin.is_closed(), "the session ended with pgveil: {e}");

    assert!(!text.contains('\x1b'), "no colour codes in a log file");
    assert!(
        text.contains("session{client=127.0.0.1:")
            && text.contains("user=\"admin\" app=\"LogProbeApp\""),
        "one span per session: {text}"
    );
    assert!(text.contains("user=\"rita\""), "{text}");
    assert!(
        text.lines().any(|l| l.contains("WARN")
            && l.contains("user=\"rita\"")
            && l.contains("statement refused sqlstate=\"42501\"")),
        "the refusal is logged in rita's span: {text}"
    );
    assert!(text.contains("shutting down"), "{text}");
    let verifier = common::verifier(&env.direct().await, "rita").await;
    let rita_pw = pgveil::demo::password("rita");
    let secrets = [
        admin_pw.as_str(),
        rita_pw.as_str(),
        new_pw,
        "Wrong-Password-1234",
        pgveil::demo::SERVICE_PASSWORD,
        verifier.rsplit('$').next().unwrap(),
    ];
    for secret in secrets.iter().chain(&values) {
        assert!(!text.contains(secret), "{secret} is in the log");
    }
}

/// A second SIGTERM does not wait out the grace period: open sessions end at once (57P01)
/// and pgveil exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_ends_sessions_at_once() {
    let env = Env::start().await;
    // a grace period longer than the test's guard in `exit`: only the second signal ends it
    let served = Served::start(&env, 600_000);
    let conn = format!(
        "host=127.0.0.1 port={} user=admin password={} dbname=crm",
        served.port,
        pgveil::demo::password("admin")
    );
    let admin = served.login(&conn).await;
    served.terminate();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let one: i32 = admin.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1, "the first signal lets the session go on");
    let sleeping = tokio::spawn(async move { admin.simple_query("SELECT pg_sleep(300)").await });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    served.terminate();
    let log = served.exit().await;
    assert!(
        log.contains("second signal: ending open sessions now"),
        "{log}"
    );
    let e = sleeping.await.unwrap().unwrap_err();
    assert_eq!(code(&e), "57P01", "{e}");
}

/// A CA and a certificate for localhost signed by it, with its key (webpki rejects
/// self-signed leaves): (ca.crt, pg.crt, pg.key) in `d`.
fn ca_and_localhost_certificate(
    d: &std::path::Path,
) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    std::fs::write(
        d.join("ext.cnf"),
        "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    let steps: [Vec<String>; 3] = [
        "req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=test-ca -keyout ca.key -out ca.crt -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign"
            .split(' ').map(str::to_owned).collect(),
        "req -newkey rsa:2048 -nodes -subj /CN=localhost -keyout pg.key -out pg.csr".split(' ').map(str::to_owned).collect(),
        "x509 -req -in pg.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -out pg.crt -extfile ext.cnf"
            .split(' ').map(str::to_owned).collect(),
    ];
    for args in steps {
        let out = std::process::Command::new("openssl")
            .args(&args)
            .current_dir(d)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    (d.join("ca.crt"), d.join("pg.crt"), d.join("pg.key"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_tls_verify_full() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = ca_and_localhost_certificate(dir.path());
    let _ = std::process::Command::new("chown")
        .args(["postgres:postgres"])
        .arg(&key)
        .arg(&cert)
        .status();
    let _ = std::process::Command::new("chmod")
        .args(["0600"])
        .arg(&key)
        .status();
    let _ = std::process::Command::new("chmod")
        .args(["0755"])
        .arg(dir.path())
        .status();
    let conf = [
        "ssl = on".to_owned(),
        format!("ssl_cert_file = '{}'", cert.display()),
        format!("ssl_key_file = '{}'", key.display()),
    ];
    let pg = tokio::task::spawn_blocking(move || {
        let conf_refs: Vec<&str> = conf.iter().map(String::as_str).collect();
        pgveil::embedded_pg::EmbeddedPg::start(&conf_refs)
    })
    .await
    .unwrap()
    .unwrap();
    let mut cfg = pgveil::demo::config_for(&pg, "127.0.0.1:0");
    pgveil::demo::provision(&pg, &cfg).await.unwrap();
    cfg.upstream.host = "localhost".into();
    cfg.upstream.tls = pgveil::config::UpstreamTls::VerifyFull;
    cfg.upstream.ca_file = Some(ca);
    let running = pgveil::server::start(cfg).await.unwrap();
    let rita = common::connect_str(&format!(
        "host=127.0.0.1 port={} user=rita password={} dbname=crm",
        running.addr.port(),
        pgveil::demo::password("rita")
    ))
    .await
    .unwrap();
    let n: i64 = common::scalar(&rita, "SELECT count(*) FROM products").await;
    assert_eq!(n, 200);
    // the upstream session really is TLS
    let direct = common::connect_str(&pg.conn_str("crm")).await.unwrap();
    let ssl: i64 = common::scalar(&direct, "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE s.ssl AND a.usename = 'pgveil_service'").await;
    assert!(ssl >= 1);
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_runs_through_pgveil_in_every_protocol_mode() {
    let env = Env::start().await;
    let bin = env.pg.bin_dir().join("pgbench");
    let port = env.port().to_string();
    let pw = pgveil::demo::password("admin");
    let run = |args: &[&str]| {
        std::process::Command::new(&bin)
            .args(["-h", "127.0.0.1", "-p", &port, "-U", "admin"])
            .args(args)
            .arg("crm")
            .env("PGPASSWORD", &pw)
            .output()
            .unwrap()
    };
    let init = run(&["-i", "-q", "-s", "1"]);
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    for mode in ["simple", "extended", "prepared"] {
        for workload in [&["-S"][..], &[][..]] {
            let mut args = vec!["-n", "-c", "4", "-j", "2", "-t", "50", "-M", mode];
            args.extend_from_slice(workload);
            let out = run(&args);
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "{mode} {workload:?}: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(
                text.contains("number of transactions actually processed: 200/200"),
                "{text}"
            );
        }
    }
}

/// No session state crosses sessions: each client session has its own upstream session, so
/// temporary tables, settings and the backend itself never carry over, concurrently or after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_state_is_shared_between_sessions() {
    let env = Env::start().await;
    let a = env.connect("admin").await;
    a.batch_execute(
        "CREATE TEMP TABLE leak_probe(x int); INSERT INTO leak_probe VALUES (1); SET application_name = 'leaky'; SET statement_timeout = '1234ms'",
    )
    .await
    .unwrap();
    let pid_a: i32 = a
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    // concurrently: another session (another user, then the same user) sees none of it
    for user in ["olivia", "admin"] {
        assert_fresh_session(&env.connect(user).await, pid_a, user).await;
    }
    // afterwards: a new session is a new backend with default settings
    drop(a);
    assert_fresh_session(&env.connect("admin").await, pid_a, "a later session").await;
}

/// `c` runs on its own backend (not `other_pid`) without the probe's temp table and settings.
async fn assert_fresh_session(c: &tokio_postgres::Client, other_pid: i32, who: &str) {
    let state = "SELECT pg_backend_pid(), to_regclass('pg_temp.leak_probe') IS NULL, current_setting('application_name'), current_setting('statement_timeout')";
    let r = c.query_one(state, &[]).await.unwrap();
    assert_ne!(r.get::<_, i32>(0), other_pid, "{who} shares a backend");
    assert!(
        r.get::<_, bool>(1),
        "{who} sees another session's temp table"
    );
    assert_ne!(r.get::<_, String>(2), "leaky", "{who}");
    assert_eq!(r.get::<_, String>(3), "0", "{who}");
}

/// An Env whose pgveil keeps upstream sessions for reuse, on one session thread (one pool).
async fn pooled_env() -> Env {
    Env::start_with(|c| {
        c.upstream.pool_size = 2;
        c.server.session_threads = 1;
    })
    .await
}

/// Wait until every client session has ended (its upstream session closed or pooled).
async fn sessions_ended(env: &Env) {
    let server = &env.running.server;
    for _ in 0..500 {
        if server.active_sessions() == 0 {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("sessions did not end");
}

async fn backend_pid(c: &tokio_postgres::Client) -> i32 {
    c.query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0)
}

/// With pooling, a cleanly ended session's PostgreSQL session serves the next client only
/// after DISCARD ALL: temp tables, settings, prepared statements, LISTEN, advisory locks,
/// cursors and sequence state of the first user are gone for the next, whoever that is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_sessions_are_reset_before_reuse() {
    let env = pooled_env().await;
    let pool = &env.running.server.pool;
    let a = env.connect("admin").await;
    a.batch_execute(
        "CREATE SEQUENCE pool_seq; CREATE TEMP TABLE leak_probe(x int); \
         SET application_name = 'leaky'; SET statement_timeout = '1234ms'; \
         SELECT set_config('pgveil_test.probe', 'leaky', false); PREPARE leak_stmt AS SELECT 1; \
         LISTEN leak_channel; SELECT pg_advisory_lock(4242); SELECT nextval('pool_seq'); \
         BEGIN; DECLARE leak_cursor CURSOR WITH HOLD FOR SELECT 1; COMMIT",
    )
    .await
    .unwrap();
    let pid_a = backend_pid(&a).await;
    drop(a);
    sessions_ended(&env).await;
    assert_eq!(pool.idle(), 1, "a cleanly ended session is kept");

    let b = env.connect("admin").await;
    assert_eq!(backend_pid(&b).await, pid_a, "the kept session is reused");
    assert_fresh_state(&b).await;
    expect_code(&b, "SELECT currval('pool_seq')", "55000").await;
    drop(b);
    sessions_ended(&env).await;

    // another user, restricted, gets the same PostgreSQL session and only her own view
    assert_eq!(pool.idle(), 1);
    let rita = env.connect("rita").await;
    assert_eq!(pool.idle(), 0, "rita's session took the kept one");
    let count = "SELECT count(*)::text FROM customers";
    let own = common::first_column(&rita, count).await;
    let fresh = env.connect("rita").await; // the pool is empty now: a new PostgreSQL session
    assert_eq!(own, common::first_column(&fresh, count).await);
}

/// The state checks of a reused session (run as the unrestricted admin, who could see it all).
async fn assert_fresh_state(c: &tokio_postgres::Client) {
    let r = c
        .query_one(
            "SELECT to_regclass('pg_temp.leak_probe') IS NULL, current_setting('application_name'), \
             current_setting('statement_timeout'), coalesce(current_setting('pgveil_test.probe', true), ''), \
             (SELECT count(*) FROM pg_prepared_statements WHERE name = 'leak_stmt'), (SELECT count(*) FROM pg_listening_channels()), \
             (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()), \
             (SELECT count(*) FROM pg_cursors WHERE name = 'leak_cursor')",
            &[],
        )
        .await
        .unwrap();
    assert!(r.get::<_, bool>(0), "temp table survived");
    assert_ne!(r.get::<_, String>(1), "leaky");
    assert_eq!(r.get::<_, String>(2), "0");
    assert_eq!(r.get::<_, String>(3), "");
    for (i, what) in [
        (4, "prepared statements"),
        (5, "LISTEN"),
        (6, "advisory locks"),
        (7, "cursors"),
    ] {
        assert_eq!(r.get::<_, i64>(i), 0, "{what} survived");
    }
}

/// A session that ends inside a transaction, with an extended batch not closed by Sync, without
/// Terminate, or after a cancel request is not reused: its upstream session is closed, as
/// without pooling, and its unfinished work is rolled back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_that_end_busy_are_not_reused() {
    let env = pooled_env().await;
    let pool = &env.running.server.pool;
    let direct = env.direct().await;
    direct
        .batch_execute(
            "CREATE TABLE pool_writes(x int); GRANT ALL ON pool_writes TO pgveil_service",
        )
        .await
        .unwrap();

    // open transaction at Terminate
    let a = env.connect("admin").await;
    a.batch_execute("BEGIN; INSERT INTO pool_writes VALUES (1)")
        .await
        .unwrap();
    drop(a);
    sessions_ended(&env).await;
    assert_eq!(pool.idle(), 0, "session in a transaction was kept");

    // Parse/Bind/Execute without Sync, then Terminate
    use pgwire::messages::extendedquery::{Bind, Execute, Parse};
    use pgwire::messages::Message;
    let mut raw = common::RawClient::login(env.port(), "admin").await;
    let mut out = bytes::BytesMut::new();
    let insert = "INSERT INTO pool_writes VALUES (2)";
    Parse::new(None, insert.into(), vec![])
        .encode(&mut out)
        .unwrap();
    Bind::new(None, None, vec![], vec![], vec![])
        .encode(&mut out)
        .unwrap();
    Execute::new(None, 0).encode(&mut out).unwrap();
    out.extend_from_slice(&pgveil::upstream::pool::TERMINATE);
    raw.send(&out).await;
    drop(raw);
    sessions_ended(&env).await;
    assert_eq!(
        pool.idle(),
        0,
        "session with an open extended batch was kept"
    );

    // no Terminate at all
    let raw = common::RawClient::login(env.port(), "admin").await;
    drop(raw);
    sessions_ended(&env).await;
    assert_eq!(pool.idle(), 0, "session without Terminate was kept");

    // a cancel request was forwarded for the session
    let c = env.connect("admin").await;
    let token = c.cancel_token();
    let (c, r) = cancel_during(c, "SELECT pg_sleep(30)", token).await;
    assert_eq!(code(&r.unwrap_err()), "57014");
    c.batch_execute("SELECT 1").await.unwrap();
    drop(c);
    sessions_ended(&env).await;
    assert_eq!(pool.idle(), 0, "session with a forwarded cancel was kept");

    let rows: i64 = common::scalar(&direct, "SELECT count(*) FROM pool_writes").await;
    assert_eq!(rows, 0, "unfinished work was committed");
}

/// Run `sql` on `c` and send `token`'s cancel request 300 ms into it.
async fn cancel_during(
    c: tokio_postgres::Client,
    sql: &'static str,
    token: tokio_postgres::CancelToken,
) -> (tokio_postgres::Client, Result<(), tokio_postgres::Error>) {
    let query = tokio::spawn(async move {
        let r = c.batch_execute(sql).await;
        (c, r)
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    query.await.unwrap()
}

/// A kept session is only reused under the same startup parameters, an old client's cancel key
/// never reaches the next client's query, and a kept session that PostgreSQL closed is not
/// handed out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_sessions_keep_identity_boundaries() {
    let env = pooled_env().await;
    let pool = &env.running.server.pool;
    let with_app = |app: &str| format!("{} application_name={app}", env.conn_str("admin"));
    let one = common::connect_str(&with_app("app_one")).await.unwrap();
    let pid_one = backend_pid(&one).await;
    let old_token = one.cancel_token();
    drop(one);
    sessions_ended(&env).await;

    let two = common::connect_str(&with_app("app_two")).await.unwrap();
    assert_ne!(
        backend_pid(&two).await,
        pid_one,
        "other startup parameters share a session"
    );
    let app: String = two
        .query_one("SELECT current_setting('application_name')", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(app, "app_two");

    // the next app_one client reuses the session; the previous client's key cannot cancel it
    let again = common::connect_str(&with_app("app_one")).await.unwrap();
    assert_eq!(backend_pid(&again).await, pid_one);
    let (again, r) = cancel_during(again, "SELECT pg_sleep(1.5)", old_token).await;
    r.expect("an ended session's cancel key cancelled the next client's query");
    drop(again);
    drop(two);
    sessions_ended(&env).await;
    assert_eq!(pool.idle(), 2);

    // PostgreSQL ends the kept sessions: the next clients get working new ones
    let direct = env.direct().await;
    direct
        .batch_execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name IN ('app_one', 'app_two')")
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let mut after = Vec::new();
    for app in ["app_one", "app_two"] {
        let c = common::connect_str(&with_app(app)).await.unwrap();
        assert_ne!(backend_pid(&c).await, pid_one);
        after.push(c);
    }
    assert_eq!(pool.idle(), 0, "a session PostgreSQL ended is still kept");
}

/// A kept session idle for longer than `pool_idle_timeout_s` is closed by pgveil, and so are
/// all kept sessions when pgveil stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_sessions_are_closed_when_idle_too_long_and_at_shutdown() {
    let env = Env::start_with(|c| {
        c.upstream.pool_size = 4;
        c.upstream.pool_idle_timeout_s = 1;
    })
    .await;
    let direct = env.direct().await;
    let backends = "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pool_probe'";
    let conn = format!("{} application_name=pool_probe", env.conn_str("admin"));
    drop(common::connect_str(&conn).await.unwrap());
    sessions_ended(&env).await;
    assert_eq!(env.running.server.pool.idle(), 1);
    let mut closed = false;
    for _ in 0..100 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let n: i64 = direct.query_one(backends, &[]).await.unwrap().get(0);
        if n == 0 && env.running.server.pool.idle() == 0 {
            closed = true;
            break;
        }
    }
    assert!(closed, "an idle kept session was not closed");

    drop(common::connect_str(&conn).await.unwrap());
    sessions_ended(&env).await;
    assert_eq!(env.running.server.pool.idle(), 1);
    let Env { running, pg, .. } = env;
    running.shutdown().await;
    let direct = common::connect_str(&pg.conn_str("crm")).await.unwrap();
    let mut closed = false;
    for _ in 0..50 {
        let n: i64 = direct.query_one(backends, &[]).await.unwrap().get(0);
        if n == 0 {
            closed = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(closed, "kept sessions outlived pgveil's shutdown");
}

/// Sessions move between session threads (what the balancer does under changing load) at
/// any point where both directions wait for input: mid-pipeline, mid-COPY, mid-transaction,
/// with prepared statements and LISTEN registered. Nothing is lost, duplicated or reordered,
/// and a restricted user's view is the same on every thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_move_between_threads_without_losing_a_byte() {
    use futures::{SinkExt, StreamExt};
    let env = Env::start_with(|c| {
        c.server.session_threads = 2;
        c.server.thread_busy_target = 0.0; // no balancer: this test moves sessions itself
    })
    .await;
    let server = env.running.server.clone();
    let direct = env.direct().await;
    let copy_sql = "COPY (SELECT g, md5(g::text) FROM generate_series(1, 200000) g) TO STDOUT";
    let expected_copy = common::copy_out_bytes(&direct, copy_sql).await;
    let count = "SELECT count(*)::text FROM customers";
    let rita_baseline = common::first_column(&env.connect("rita").await, count).await;
    let wide = "SELECT id, repeat(md5(id::text), 4000) FROM customers ORDER BY id";
    let wide_baseline = common::simple_rows(&env.connect("rita").await, wide)
        .await
        .unwrap();
    assert!(wide_baseline.len() >= 2, "rita sees several wide rows");

    let admin = env.connect("admin").await;
    let reader = env.connect("admin").await;
    let rita = env.connect("rita").await;
    let copier = env.connect("admin").await;
    admin
        .batch_execute("CREATE TABLE moved_in(a int, b text)")
        .await
        .unwrap();
    // a listener whose connection object we drive, to see its notifications
    let (tx, mut notes) = futures::channel::mpsc::unbounded();
    let (listener, mut listen_connection) =
        tokio_postgres::connect(&env.conn_str("admin"), tokio_postgres::NoTls)
            .await
            .unwrap();
    let forward = tokio::spawn(async move {
        let mut stream = futures::stream::poll_fn(move |cx| listen_connection.poll_message(cx));
        while let Some(Ok(m)) = stream.next().await {
            if let tokio_postgres::AsyncMessage::Notification(n) = m {
                let _ = tx.unbounded_send(n.payload().to_owned());
            }
        }
    });
    listener.batch_execute("LISTEN moved").await.unwrap();

    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mover = {
        let (server, done) = (server.clone(), done.clone());
        tokio::spawn(async move {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                server.move_sessions(0, 1, 100);
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                server.move_sessions(1, 0, 100);
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
        })
    };

    let copy_out = async {
        for _ in 0..3 {
            assert!(common::copy_out_bytes(&reader, copy_sql).await == expected_copy);
        }
    };
    // a client that reads slowly: pgveil's writes to it block, so moves are asked for while
    // a write is half done (and must wait until it is not)
    let slow_reader = env.connect("admin").await;
    let slow_copy = async {
        let s = slow_reader.copy_out(copy_sql).await.unwrap();
        futures::pin_mut!(s);
        let mut got = Vec::with_capacity(expected_copy.len());
        let mut n = 0u32;
        while let Some(chunk) = s.next().await {
            got.extend_from_slice(&chunk.unwrap());
            n += 1;
            if n % 2_000 == 0 {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
        assert!(got == expected_copy, "slow COPY arrived intact");
    };
    let copy_in = async {
        for round in 0..5 {
            let sink = copier.copy_in("COPY moved_in FROM STDIN").await.unwrap();
            futures::pin_mut!(sink);
            for chunk in 0..200 {
                let mut data = String::new();
                for i in 0..50 {
                    data.push_str(&format!("{}\trow {round} {chunk} {i}\n", chunk * 50 + i));
                }
                sink.send(bytes::Bytes::from(data)).await.unwrap();
            }
            assert_eq!(sink.finish().await.unwrap(), 10_000);
        }
    };
    let pipelined = async {
        let stmt = rita
            .prepare("SELECT count(*)::text FROM customers WHERE id > $1")
            .await
            .unwrap();
        for _ in 0..30 {
            // 20 statements in flight at once, and a simple query between rounds
            let all =
                futures::future::join_all((0..20).map(|_| rita.query_one(&stmt, &[&0i32]))).await;
            let total = common::first_column(&rita, count).await;
            assert_eq!(total, rita_baseline);
            for r in all {
                assert_eq!(r.unwrap().get::<_, String>(0), rita_baseline[0]);
            }
        }
    };
    let transactions = async {
        for i in 0..200 {
            admin.batch_execute("BEGIN").await.unwrap();
            admin
                .execute("INSERT INTO moved_in VALUES ($1, 'tx')", &[&i])
                .await
                .unwrap();
            admin.batch_execute("COMMIT").await.unwrap();
            admin
                .batch_execute(&format!("NOTIFY moved, '{i}'"))
                .await
                .unwrap();
        }
    };
    // a restricted user's simple queries with rows far larger than one read: moves land while
    // pgveil is in the middle of relaying a row (several per run); with its place in the
    // stream lost, pgveil would show a refusal's stand-in error or its own statements' answers
    // to the client, or hang it
    let wide_rows = async {
        for _ in 0..15 {
            let rows = common::simple_rows(&rita, wide).await.unwrap();
            assert!(rows == wide_baseline, "wide rows arrive intact");
            assert_eq!(common::first_column(&rita, count).await, rita_baseline);
            // a refusal's stand-in error is still found in the stream and replaced
            common::expect_code(&rita, "SELECT * FROM internal_salaries", "42501").await;
        }
    };
    let all = async {
        tokio::join!(
            copy_out,
            slow_copy,
            copy_in,
            pipelined,
            transactions,
            wide_rows
        )
    };
    tokio::time::timeout(std::time::Duration::from_secs(120), all)
        .await
        .expect("the clients finish (a desynchronised stream would hang them)");
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    mover.await.unwrap();

    let moved = server.sessions_moved();
    eprintln!("sessions moved {moved} times");
    assert!(moved >= 20, "sessions moved only {moved} times");
    let n: i64 = direct
        .query_one(
            "SELECT count(*) FROM moved_in WHERE b = 'tx' OR b LIKE 'row %'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 200 + 5 * 10_000, "every row written once");
    let mut got = Vec::new();
    while got.len() < 200 {
        let note = tokio::time::timeout(std::time::Duration::from_secs(10), notes.next())
            .await
            .expect("all notifications arrive")
            .unwrap();
        got.push(note);
    }
    let want: Vec<String> = (0..200).map(|i| i.to_string()).collect();
    assert_eq!(got, want, "notifications in order, none lost");
    // the listener's session still answers after all the moves
    assert_eq!(
        common::first_column(&listener, "SELECT 'still here'").await,
        ["still here"]
    );
    forward.abort();
}

/// With balancing on, sessions that put little load on pgveil end up on one session thread
/// (a thread per message wake-up costs more than it saves), and still work there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn light_load_is_packed_onto_one_thread() {
    let env = Env::start_with(|c| {
        c.server.session_threads = 2;
        c.server.thread_busy_target = 0.45;
    })
    .await;
    let server = env.running.server.clone();
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(env.connect("admin").await);
    }
    // dealt round-robin at first (or onto one thread already, if the balancer ran first)
    let mut packed = false;
    for _ in 0..200 {
        let per_thread = server.sessions_per_thread();
        if per_thread.iter().filter(|&&n| n > 0).count() == 1
            && per_thread.iter().sum::<usize>() == 4
        {
            packed = true;
            break;
        }
        for c in &clients {
            common::first_column(c, "SELECT 'x'").await;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(
        packed,
        "sessions per thread: {:?}",
        server.sessions_per_thread()
    );
    for (i, c) in clients.iter().enumerate() {
        let v = common::first_column(c, &format!("SELECT {i}::text")).await;
        assert_eq!(v, [i.to_string()]);
    }
}

/// A PostgreSQL session kept by one session thread serves a client that starts on another
/// (sessions end wherever the balancer moved them), and is reset there as anywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_sessions_serve_clients_on_other_threads() {
    let env = Env::start_with(|c| {
        c.upstream.pool_size = 4;
        c.server.session_threads = 2;
        c.server.thread_busy_target = 0.0; // sessions are dealt 0, 1, 0, ... and stay
    })
    .await;
    let server = env.running.server.clone();
    let a = env.connect("admin").await; // thread 0
    a.batch_execute("CREATE TEMP TABLE leak_probe(x int)")
        .await
        .unwrap();
    let pid_a = backend_pid(&a).await;
    assert_eq!(server.sessions_per_thread(), [1, 0]);
    drop(a);
    sessions_ended(&env).await;
    assert_eq!(server.pool.idle(), 1);
    let b = env.connect("admin").await; // thread 1
    assert_eq!(
        backend_pid(&b).await,
        pid_a,
        "thread 1 reused thread 0's kept session"
    );
    assert_eq!(server.sessions_per_thread(), [0, 1]);
    assert_fresh_state(&b).await;
    assert_eq!(common::first_column(&b, "SELECT 'works'").await, ["works"]);
}
