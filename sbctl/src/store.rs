//! What sbctl reads and writes in etcd: the registrations under
//! `/switchboard/services/` and the traffic policies under
//! `/switchboard/policy/<service>` (docs/operations.md, "Versions and
//! traffic policy").

use discovery::{EtcdOptions, Registration};
use etcd_client::GetOptions;
use serde_json::{Map, Value};

pub struct Store {
    client: etcd_client::Client,
}

impl Store {
    pub async fn connect(endpoints: &[String]) -> Result<Store, String> {
        let opts = EtcdOptions::new(endpoints.to_vec());
        let client = discovery::connect(&opts)
            .await
            .map_err(|e| format!("etcd {}: {e}", endpoints.join(",")))?;
        Ok(Store { client })
    }

    /// Every registration that parses.
    pub async fn registrations(&mut self) -> Result<Vec<Registration>, String> {
        let r = self
            .client
            .get(discovery::PREFIX, Some(GetOptions::new().with_prefix()))
            .await
            .map_err(|e| format!("etcd: {e}"))?;
        Ok(r.kvs()
            .iter()
            .filter_map(|kv| serde_json::from_slice(kv.value()).ok())
            .collect())
    }

    /// The admin URLs whose `version.<service>.*` counts `service`'s
    /// calls: the terminators given (`--terminator-admin`), and every
    /// registered process of another service (the aggregator counts its
    /// `backend` calls; a process that calls nothing reports none, so
    /// summing them all counts each call once).
    pub async fn callers(
        &mut self,
        terminators: &[String],
        service: &str,
    ) -> Result<Vec<String>, String> {
        let mut out = terminators.to_vec();
        for r in self.registrations().await? {
            if r.service != service && !r.admin.is_empty() && !out.contains(&r.admin) {
                out.push(r.admin);
            }
        }
        Ok(out)
    }

    fn key(service: &str) -> String {
        format!("{}{service}", discovery::POLICY_PREFIX)
    }

    /// The service's policy document; an empty object when it has none.
    pub async fn policy(&mut self, service: &str) -> Result<Map<String, Value>, String> {
        let r = self
            .client
            .get(Self::key(service), None)
            .await
            .map_err(|e| format!("etcd: {e}"))?;
        match r.kvs().first() {
            None => Ok(Map::new()),
            Some(kv) => match serde_json::from_slice(kv.value()) {
                Ok(Value::Object(m)) => Ok(m),
                _ => Err(format!(
                    "{} does not hold a JSON object; fix or delete it first",
                    Self::key(service)
                )),
            },
        }
    }

    /// Checks `doc` as every terminator will, then writes it.
    pub async fn put_policy(
        &mut self,
        service: &str,
        doc: &Map<String, Value>,
    ) -> Result<(), String> {
        let text = Value::Object(doc.clone()).to_string();
        traffic::policy::parse_one(service, text.as_bytes()).map_err(|e| e.join("; "))?;
        self.client
            .put(Self::key(service), text, None)
            .await
            .map_err(|e| format!("etcd: {e}"))?;
        Ok(())
    }

    /// The weights in a policy document, in order.
    pub fn weights(doc: &Map<String, Value>) -> Vec<(String, u32)> {
        doc.get("weights")
            .and_then(|w| w.as_object())
            .map(|w| {
                w.iter()
                    .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0) as u32))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn set_weights(doc: &mut Map<String, Value>, weights: &[(String, u32)]) {
        let w: Map<String, Value> = weights
            .iter()
            .map(|(k, v)| (k.clone(), Value::from(*v)))
            .collect();
        doc.insert("weights".into(), Value::Object(w));
    }
}
