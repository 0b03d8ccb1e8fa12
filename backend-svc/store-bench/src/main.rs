//! Chooses backend-svc's store: redb against fjall on the three operations
//! backend-svc performs, in one run, on the same disk.
//!
//! - `put, fsync each`: one durable write acknowledged at a time (the worst
//!   case: one writer, no batching).
//! - `put, group of 64`: 64 writes in one transaction / batch and one fsync,
//!   what backend-svc's writer thread does under concurrent load.
//! - `get, hit`: a point read of a present key from 100k keys of 100 bytes.
//! - `reopen`: open time after the 100k keys (restart after `kill -9`).

use std::time::{Duration, Instant};

const KEYS: usize = 100_000;
const VALUE: [u8; 100] = [7u8; 100];
const SINGLE_PUTS: usize = 300;
const GROUPS: usize = 300;
const GROUP: usize = 64;
const GETS: usize = 300_000;

fn key(i: usize) -> Vec<u8> {
    format!("user:{:08}", (i.wrapping_mul(2654435761)) % KEYS).into_bytes()
}

fn per_op(d: Duration, n: usize) -> f64 {
    d.as_secs_f64() * 1e6 / n as f64
}

mod with_redb {
    use super::*;
    use redb::{Database, Durability, ReadableDatabase, TableDefinition};
    const T: TableDefinition<&[u8], &[u8]> = TableDefinition::new("kv");

    pub fn run(dir: &std::path::Path) -> [f64; 4] {
        let path = dir.join("kv.redb");
        let db = Database::create(&path).unwrap();
        // Load.
        let tx = db.begin_write().unwrap();
        {
            let mut t = tx.open_table(T).unwrap();
            for i in 0..KEYS {
                t.insert(format!("user:{i:08}").as_bytes(), &VALUE[..]).unwrap();
            }
        }
        tx.commit().unwrap();

        let t0 = Instant::now();
        for i in 0..SINGLE_PUTS {
            let mut tx = db.begin_write().unwrap();
            tx.set_durability(Durability::Immediate).unwrap();
            tx.open_table(T).unwrap().insert(&key(i)[..], &VALUE[..]).unwrap();
            tx.commit().unwrap();
        }
        let single = per_op(t0.elapsed(), SINGLE_PUTS);

        let t0 = Instant::now();
        for g in 0..GROUPS {
            let mut tx = db.begin_write().unwrap();
            tx.set_durability(Durability::Immediate).unwrap();
            {
                let mut t = tx.open_table(T).unwrap();
                for j in 0..GROUP {
                    t.insert(&key(g * GROUP + j)[..], &VALUE[..]).unwrap();
                }
            }
            tx.commit().unwrap();
        }
        let group = per_op(t0.elapsed(), GROUPS * GROUP);

        let keys: Vec<Vec<u8>> = (0..1024).map(key).collect();
        let t0 = Instant::now();
        let mut found = 0usize;
        for i in 0..GETS {
            let tx = db.begin_read().unwrap();
            let t = tx.open_table(T).unwrap();
            found += t.get(&keys[i & 1023][..]).unwrap().map_or(0, |v| v.value().len());
        }
        let get = per_op(t0.elapsed(), GETS);
        assert_eq!(found, GETS * VALUE.len());
        drop(db);

        let t0 = Instant::now();
        let db = Database::open(&path).unwrap();
        let reopen = t0.elapsed().as_secs_f64() * 1e6;
        drop(db);
        [single, group, get, reopen]
    }
}

mod with_fjall {
    use super::*;
    use fjall::{Database, KeyspaceCreateOptions, PersistMode};

    pub fn run(dir: &std::path::Path) -> [f64; 4] {
        let path = dir.join("fjall");
        let db = Database::builder(&path).open().unwrap();
        let ks = db.keyspace("kv", KeyspaceCreateOptions::default).unwrap();
        for i in 0..KEYS {
            ks.insert(format!("user:{i:08}").into_bytes(), VALUE.to_vec()).unwrap();
        }
        db.persist(PersistMode::SyncAll).unwrap();

        let t0 = Instant::now();
        for i in 0..SINGLE_PUTS {
            let mut b = db.batch().durability(Some(PersistMode::SyncAll));
            b.insert(&ks, key(i), VALUE.to_vec());
            b.commit().unwrap();
        }
        let single = per_op(t0.elapsed(), SINGLE_PUTS);

        let t0 = Instant::now();
        for g in 0..GROUPS {
            let mut b = db.batch().durability(Some(PersistMode::SyncAll));
            for j in 0..GROUP {
                b.insert(&ks, key(g * GROUP + j), VALUE.to_vec());
            }
            b.commit().unwrap();
        }
        let group = per_op(t0.elapsed(), GROUPS * GROUP);

        let keys: Vec<Vec<u8>> = (0..1024).map(key).collect();
        let t0 = Instant::now();
        let mut found = 0usize;
        for i in 0..GETS {
            found += ks.get(&keys[i & 1023]).unwrap().map_or(0, |v| v.len());
        }
        let get = per_op(t0.elapsed(), GETS);
        assert_eq!(found, GETS * VALUE.len());
        drop(ks);
        drop(db);

        let t0 = Instant::now();
        let db = Database::builder(&path).open().unwrap();
        let reopen = t0.elapsed().as_secs_f64() * 1e6;
        drop(db);
        [single, group, get, reopen]
    }
}

fn main() {
    let rounds = 3;
    let mut r = vec![];
    let mut f = vec![];
    for _ in 0..rounds {
        // Interleaved so that disk or CPU noise hits both alike.
        let d = tempfile::tempdir_in(".").unwrap();
        r.push(with_redb::run(d.path()));
        let d = tempfile::tempdir_in(".").unwrap();
        f.push(with_fjall::run(d.path()));
    }
    let med = |v: &Vec<[f64; 4]>, i: usize| {
        let mut x: Vec<f64> = v.iter().map(|a| a[i]).collect();
        x.sort_by(|a, b| a.partial_cmp(b).unwrap());
        x[x.len() / 2]
    };
    println!("| operation | redb µs/op | fjall µs/op | fjall ÷ redb |");
    println!("|---|---:|---:|---:|");
    for (i, name) in ["put, fsync each", "put, group of 64 per fsync", "get, hit (100k keys)", "reopen after load"]
        .iter()
        .enumerate()
    {
        let (a, b) = (med(&r, i), med(&f, i));
        println!("| {name} | {a:.1} | {b:.1} | {:.2} |", b / a);
    }
}
