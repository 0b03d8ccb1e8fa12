//! Feeds arbitrary bytes to the CURVE handshake and MESSAGE parsers
//! (bus::zmtp::curve), at every step a peer could send them: in place of
//! HELLO; of INITIATE after a real HELLO; of WELCOME and READY to a real
//! client; of a MESSAGE to a real session; and real commands overlaid with
//! the input (XOR) or cut to its length. Each must return an error or a
//! value, never panic; a real session must never accept a changed box.
//! Run: `cd bus && RUSTC_BOOTSTRAP=1 cargo fuzz run curve_handshake -- -max_total_time=60`
#![no_main]

use bus::curve::KeyPair;
use bus::zmtp::curve::{ClientHandshake, ServerHandshake};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn keys() -> &'static (KeyPair, KeyPair) {
    static K: OnceLock<(KeyPair, KeyPair)> = OnceLock::new();
    K.get_or_init(|| (KeyPair::generate(), KeyPair::generate()))
}

/// `real` with `data` XORed over it, or cut to `data`'s length when
/// `cut`; and whether any byte of `real` changed (XOR only).
fn spoil(real: &[u8], data: &[u8], cut: bool) -> (Vec<u8>, bool) {
    if cut {
        return (real[..data.len().min(real.len())].to_vec(), false);
    }
    let mut v = real.to_vec();
    for (x, b) in v.iter_mut().zip(data) {
        *x ^= b;
    }
    let changed = v != real;
    (v, changed)
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, data)) = data.split_first() else {
        return;
    };
    let (client_keys, server_keys) = keys();
    let mut client = ClientHandshake::new(client_keys, server_keys.public);
    let mut server = ServerHandshake::new(server_keys);
    let hello = client.hello().expect("hello");
    let cut = mode & 0x80 != 0;
    match mode & 7 {
        0 => {
            let _ = server.hello(data);
            let _ = server.initiate(data);
        }
        1 => {
            let (h, _) = spoil(&hello, data, cut);
            let r = server.hello(&h);
            // Only the padding (bytes 8..80) is not authenticated.
            if r.is_ok() {
                assert_eq!((&h[..8], &h[80..]), (&hello[..8], &hello[80..]));
            }
        }
        2 => {
            server.hello(&hello).expect("welcome");
            let _ = server.initiate(data);
        }
        3 => {
            let welcome = server.hello(&hello).expect("welcome");
            let initiate = client.welcome(&welcome, b"").expect("initiate");
            let (bad, changed) = spoil(&initiate, data, cut);
            let r = server.initiate(&bad);
            if changed {
                assert!(r.is_err(), "a changed INITIATE was accepted");
            }
        }
        4 => {
            let _ = client.welcome(data, data);
            let _ = client.ready(data);
        }
        5 => {
            let welcome = server.hello(&hello).expect("welcome");
            let (bad, changed) = spoil(&welcome, data, cut);
            let r = client.welcome(&bad, b"");
            if changed {
                assert!(r.is_err(), "a changed WELCOME was accepted");
            }
        }
        _ => {
            let welcome = server.hello(&hello).expect("welcome");
            let initiate = client.welcome(&welcome, b"").expect("initiate");
            server.initiate(&initiate).expect("initiated");
            let (ready, mut ss) = server.ready(b"").expect("ready");
            if mode & 7 == 6 {
                let (bad, changed) = spoil(&ready, data, cut);
                let r = client.ready(&bad);
                if changed {
                    assert!(r.is_err(), "a changed READY was accepted");
                }
                return;
            }
            let (_, mut cs) = client.ready(&ready).expect("session");
            let _ = ss.opener.open(data);
            let mut wire = Vec::new();
            cs.sealer.seal_frame(false, false, data, &mut wire).expect("seal");
            // Skip the ZMTP frame head (2 or 9 bytes) to the MESSAGE body.
            let body = &wire[if wire[0] & 2 != 0 { 9 } else { 2 }..];
            let (bad, changed) = spoil(body, data, cut);
            let r = ss.opener.open(&bad);
            if changed {
                assert!(r.is_err(), "a changed MESSAGE was accepted");
            }
        }
    }
});
