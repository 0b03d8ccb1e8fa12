//! Feeds arbitrary bytes to the greeting parser, a prefix at a time as a
//! socket would deliver them: it must return, never panic.
//! Run: `cd bus && RUSTC_BOOTSTRAP=1 cargo fuzz run greeting -- -max_total_time=60`
#![no_main]

use bus::zmtp::greeting;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for n in 0..=data.len().min(greeting::GREETING_LEN + 1) {
        match greeting::parse(&data[..n]) {
            Ok(Some(g)) => {
                assert!(n >= greeting::GREETING_LEN);
                assert!(g.major >= 3 && g.mechanism.len() <= 20);
            }
            Ok(None) => assert!(n < greeting::GREETING_LEN),
            Err(_) => {
                // Refused: every longer prefix is refused too.
                assert!(greeting::parse(data).is_err());
                return;
            }
        }
    }
});
