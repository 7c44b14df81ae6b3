//! A container's environment, resolved the way the kubelet orders it: the
//! defaults (`PATH`, `HOSTNAME`), the `kubernetes` Service variables (set
//! even when automount is off), `envFrom`, then `env` with `valueFrom` and
//! `$(VAR)` expansion, and `HOME` last.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Container, EnvFromSource, EnvVarSource, Secret};
use kube::Api;

use super::Worker;
use crate::node::downward;

/// Why a container's environment could not be resolved; the container then
/// waits with `CreateContainerConfigError`, as on a kubelet.
#[derive(Debug, thiserror::Error)]
pub(super) enum Error {
    /// Reading a configMap or secret the env names failed.
    #[error("couldn't get {kind} {ns}/{name}")]
    Fetch {
        kind: &'static str,
        ns: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    /// `envFrom` names a configMap or secret that does not exist (and is not optional).
    #[error("{kind} {name:?} not found")]
    NotFound { kind: &'static str, name: String },
    /// A `configMapKeyRef`/`secretKeyRef` names a key that does not exist.
    #[error("couldn't find key {key} in {kind} {ns}/{name}")]
    MissingKey {
        kind: &'static str,
        ns: String,
        name: String,
        key: String,
    },
    /// A `fieldRef` or `resourceFieldRef` the node cannot resolve.
    #[error(transparent)]
    Downward(#[from] downward::Error),
}

/// An ordered environment: setting a name again replaces its value in place.
#[derive(Default)]
struct Env(Vec<(String, String)>);

impl Env {
    fn set(&mut self, k: String, v: String) {
        match self.0.iter_mut().find(|(ek, _)| *ek == k) {
            Some(e) => e.1 = v,
            None => self.0.push((k, v)),
        }
    }
}

/// The variables of the `kubernetes` Service a kubelet sets in every container.
fn service_env(host: &str, port: u16) -> Vec<(String, String)> {
    let url = format!("tcp://{host}:{port}");
    [
        ("KUBERNETES_SERVICE_HOST".to_string(), host.to_string()),
        ("KUBERNETES_SERVICE_PORT".into(), port.to_string()),
        ("KUBERNETES_SERVICE_PORT_HTTPS".into(), port.to_string()),
        ("KUBERNETES_PORT".into(), url.clone()),
        (format!("KUBERNETES_PORT_{port}_TCP"), url),
        (format!("KUBERNETES_PORT_{port}_TCP_PROTO"), "tcp".into()),
        (format!("KUBERNETES_PORT_{port}_TCP_PORT"), port.to_string()),
        (format!("KUBERNETES_PORT_{port}_TCP_ADDR"), host.to_string()),
    ]
    .into()
}

impl Worker {
    /// Resolves the container's env, the way the kubelet orders it.
    pub(super) async fn build_env(&self, c: &Container) -> Result<Vec<(String, String)>, Error> {
        let o = &self.ctx.opts;
        let mut env = Env::default();
        env.set(
            "PATH".into(),
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        );
        env.set("HOSTNAME".into(), self.name.clone());
        for (k, v) in service_env(&o.api_host, o.api_port) {
            env.set(k, v);
        }
        for from in c.env_from.iter().flatten() {
            self.env_from(from, &mut env).await?;
        }
        for e in c.env.iter().flatten() {
            let value = match &e.value_from {
                Some(from) => match self.value_from(c, from).await? {
                    Some(v) => v,
                    None => continue,
                },
                None => expand(e.value.as_deref().unwrap_or(""), &env.0),
            };
            env.set(e.name.clone(), value);
        }
        if !env.0.iter().any(|(k, _)| k == "HOME") {
            env.0.push(("HOME".into(), "/root".into()));
        }
        Ok(env.0)
    }

    /// The data of configMap or secret `name` (secret values as text);
    /// `None` when it does not exist.
    async fn object_data(
        &self,
        kind: Kind,
        name: &str,
    ) -> Result<Option<BTreeMap<String, String>>, Error> {
        let client = self.ctx.client.clone();
        let fetched = match kind {
            Kind::ConfigMap => Api::<ConfigMap>::namespaced(client, &self.ns)
                .get_opt(name)
                .await
                .map(|cm| cm.map(|cm| cm.data.unwrap_or_default())),
            Kind::Secret => Api::<Secret>::namespaced(client, &self.ns)
                .get_opt(name)
                .await
                .map(|s| s.map(|s| text_values(s.data.unwrap_or_default()))),
        };
        fetched.map_err(|source| Error::Fetch {
            kind: kind.lower(),
            ns: self.ns.clone(),
            name: name.to_string(),
            source,
        })
    }

    /// Every key of an `envFrom` configMap or secret, with its prefix.
    async fn env_from(&self, from: &EnvFromSource, env: &mut Env) -> Result<(), Error> {
        let prefix = from.prefix.clone().unwrap_or_default();
        let refs = [
            from.config_map_ref
                .as_ref()
                .map(|r| (Kind::ConfigMap, &r.name, r.optional)),
            from.secret_ref
                .as_ref()
                .map(|r| (Kind::Secret, &r.name, r.optional)),
        ];
        for (kind, name, optional) in refs.into_iter().flatten() {
            match self.object_data(kind, name).await? {
                Some(data) => {
                    for (k, v) in data {
                        env.set(format!("{prefix}{k}"), v);
                    }
                }
                None if optional == Some(true) => {}
                None => {
                    return Err(Error::NotFound {
                        kind: kind.lower(),
                        name: name.clone(),
                    });
                }
            }
        }
        Ok(())
    }

    /// The value of an `env[].valueFrom`; `None` for an optional key that is missing.
    async fn value_from(
        &self,
        c: &Container,
        from: &EnvVarSource,
    ) -> Result<Option<String>, Error> {
        let key_ref = if let Some(f) = &from.field_ref {
            return Ok(Some(downward::field_value(&self.pod, &f.field_path)?));
        } else if let Some(r) = &from.resource_field_ref {
            let mut r = r.clone();
            if r.container_name.as_deref().unwrap_or("").is_empty() {
                r.container_name = Some(c.name.clone());
            }
            let node = self.ctx.node_res;
            return Ok(Some(downward::resource_value(&self.pod, &r, node)?));
        } else if let Some(k) = &from.config_map_key_ref {
            (Kind::ConfigMap, &k.name, &k.key, k.optional)
        } else if let Some(k) = &from.secret_key_ref {
            (Kind::Secret, &k.name, &k.key, k.optional)
        } else {
            return Ok(Some(String::new()));
        };
        let (kind, name, key, optional) = key_ref;
        let data = self.object_data(kind, name).await?;
        match data.and_then(|mut d| d.remove(key)) {
            Some(v) => Ok(Some(v)),
            None if optional == Some(true) => Ok(None),
            None => Err(Error::MissingKey {
                kind: kind.title(),
                ns: self.ns.clone(),
                name: name.clone(),
                key: key.clone(),
            }),
        }
    }
}

/// Where env values come from besides the Pod itself.
#[derive(Clone, Copy)]
enum Kind {
    ConfigMap,
    Secret,
}

impl Kind {
    /// As in "configmap \"x\" not found".
    fn lower(self) -> &'static str {
        match self {
            Kind::ConfigMap => "configmap",
            Kind::Secret => "secret",
        }
    }

    /// As in "couldn't find key k in ConfigMap ns/x".
    fn title(self) -> &'static str {
        match self {
            Kind::ConfigMap => "ConfigMap",
            Kind::Secret => "Secret",
        }
    }
}

fn text_values(data: BTreeMap<String, ByteString>) -> BTreeMap<String, String> {
    data.into_iter()
        .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
        .collect()
}

/// Kubernetes' `$(VAR)` expansion: defined names are replaced, `$$` is `$`,
/// anything else is left as written.
pub(super) fn expand(input: &str, env: &[(String, String)]) -> String {
    let b = input.as_bytes();
    let mut out = String::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'$' && i + 1 < b.len() {
            if b[i + 1] == b'$' {
                out.push('$');
                i += 2;
                continue;
            }
            let close = if b[i + 1] == b'(' {
                input[i + 2..].find(')')
            } else {
                None
            };
            if let Some(close) = close {
                let name = &input[i + 2..i + 2 + close];
                if let Some((_, v)) = env.iter().rev().find(|(k, _)| k == name) {
                    out.push_str(v);
                } else {
                    out.push_str(&input[i..i + 3 + close]);
                }
                i += 3 + close;
                continue;
            }
        }
        let ch = input[i..].chars().next().unwrap_or('?');
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> Vec<(String, String)> {
        vec![("A".into(), "1".into()), ("B".into(), "two".into())]
    }

    #[test]
    fn expansion_follows_kubernetes_rules() {
        assert_eq!(expand("x$(A)y", &env()), "x1y");
        assert_eq!(expand("$(B)/$(C)", &env()), "two/$(C)");
        assert_eq!(expand("$$(A)", &env()), "$(A)");
        assert_eq!(expand("$(A", &env()), "$(A");
        assert_eq!(expand("ünï$(A)", &env()), "ünï1");
    }

    #[test]
    fn service_variables_name_the_port() {
        let vars = service_env("127.0.0.1", 6443);
        let get = |k: &str| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("KUBERNETES_SERVICE_HOST"), Some("127.0.0.1"));
        assert_eq!(
            get("KUBERNETES_PORT_6443_TCP"),
            Some("tcp://127.0.0.1:6443")
        );
        assert_eq!(vars.len(), 8);
    }

    #[test]
    fn setting_again_keeps_the_first_position() {
        let mut e = Env::default();
        e.set("A".into(), "1".into());
        e.set("B".into(), "2".into());
        e.set("A".into(), "3".into());
        assert_eq!(e.0, [("A".into(), "3".into()), ("B".into(), "2".into())]);
    }
}
