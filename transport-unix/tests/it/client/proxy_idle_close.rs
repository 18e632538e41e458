//! A proxy closing an idle connection (it evicts the connection idle
//! longest when its table is full, SPEC §3.1): the next call reconnects
//! with a fresh handshake; a proxy that is then gone is a lost connection.
//! (Beside `client.rs`, which is long already; the test server is its.)

use std::time::Duration;

use credproxy_core::Config;
use credproxy_unix::client::{CONNECTION_LOST_MESSAGE, CapabilitySource, Client, ConnectionState};
use smol::Timer;

use super::{Server, block_on_bounded, store_keys};

/// Waits (bounded by the test's own bound) until the client has seen the
/// proxy close its idle connection.
async fn wait_idle(client: &Client) {
    while client.connection_state() != ConnectionState::Idle {
        Timer::after(Duration::from_millis(5)).await;
    }
}

// The proxy closes the connection idle longest when its table is full
// (SPEC §3.1): with nothing pending, that is not a loss. (This test asserted
// the old behaviour, ConnectionLost for good, before the eviction policy.)
#[test]
fn server_closing_an_idle_connection_makes_the_next_call_reconnect() {
    let server = Server::start_with(Config::default(), store_keys);
    block_on_bounded(async {
        let client = server.connect().await;
        assert!(client.get_api_key("K0").await.expect("key").is_some());
        server.kill_all();
        wait_idle(&client).await;
        assert_eq!(server.handshakes(), 1);
        let key = client.get_api_key("K1").await.expect("key after reconnect");
        assert_eq!(key.expect("present").expose(), "value-1");
        assert_eq!(server.accepted(), 2);
        assert_eq!(server.handshakes(), 2);
        assert!(matches!(
            client.connection_state(),
            ConnectionState::Connected { version: 2 }
        ));
        // And again: every idle close by the proxy is survived.
        server.kill_all();
        wait_idle(&client).await;
        let keys = client.list_api_keys().await.expect("keys");
        assert!(keys.contains(&"K0".to_owned()), "{keys:?}");
        assert_eq!(server.accepted(), 3);
    });
}

#[test]
fn server_closing_an_idle_connection_then_gone_is_a_lost_connection() {
    let server = Server::start_with(Config::default(), store_keys);
    let path = server.path.clone();
    block_on_bounded(async {
        let client = Client::connect(&path, CapabilitySource::None)
            .await
            .expect("connect");
        assert!(client.get_api_key("K0").await.expect("key").is_some());
        // The proxy stops: it closes the idle connection, then nobody
        // listens on the socket any more.
        server.kill_all();
        wait_idle(&client).await;
        drop(server);
        for _ in 0..2 {
            let err = client.list_api_keys().await.expect_err("lost");
            assert!(err.is_connection_lost(), "{err:?}");
            assert_eq!(err.to_string(), CONNECTION_LOST_MESSAGE);
        }
        assert_eq!(client.connection_state(), ConnectionState::Lost);
    });
}
