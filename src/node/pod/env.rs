//! A container's environment, resolved the way the kubelet orders it: the
//! defaults (`PATH`, `HOSTNAME`), the `kubernetes` Service variables (set
//! even when automount is off), `envFrom`, then `env` with `valueFrom` and
//! `$(VAR)` expansion, and `HOME` last.

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

    fn configmaps(&self) -> Api<ConfigMap> {
        Api::namespaced(self.ctx.client.clone(), &self.ns)
    }

    fn secrets(&self) -> Api<Secret> {
        Api::namespaced(self.ctx.client.clone(), &self.ns)
    }

    fn fetch_error(&self, kind: &'static str, name: &str) -> impl FnOnce(kube::Error) -> Error {
        let (ns, name) = (self.ns.clone(), name.to_string());
        move |source| Error::Fetch {
            kind,
            ns,
            name,
            source,
        }
    }

    /// Every key of an `envFrom` configMap or secret, with its prefix.
    async fn env_from(&self, from: &EnvFromSource, env: &mut Env) -> Result<(), Error> {
        let prefix = from.prefix.clone().unwrap_or_default();
        if let Some(r) = &from.config_map_ref {
            let cm = self
                .configmaps()
                .get_opt(&r.name)
                .await
                .map_err(self.fetch_error("configmap", &r.name))?;
            match cm {
                Some(cm) => {
                    for (k, v) in cm.data.unwrap_or_default() {
                        env.set(format!("{prefix}{k}"), v);
                    }
                }
                None if r.optional == Some(true) => {}
                None => {
                    return Err(Error::NotFound {
                        kind: "configmap",
                        name: r.name.clone(),
                    });
                }
            }
        }
        if let Some(r) = &from.secret_ref {
            let s = self
                .secrets()
                .get_opt(&r.name)
                .await
                .map_err(self.fetch_error("secret", &r.name))?;
            match s {
                Some(s) => {
                    for (k, v) in s.data.unwrap_or_default() {
                        env.set(
                            format!("{prefix}{k}"),
                            String::from_utf8_lossy(&v.0).into_owned(),
                        );
                    }
                }
                None if r.optional == Some(true) => {}
                None => {
                    return Err(Error::NotFound {
                        kind: "secret",
                        name: r.name.clone(),
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
        let missing = |kind: &'static str, name: &str, key: &str| Error::MissingKey {
            kind,
            ns: self.ns.clone(),
            name: name.to_string(),
            key: key.to_string(),
        };
        if let Some(f) = &from.field_ref {
            Ok(Some(downward::field_value(&self.pod, &f.field_path)?))
        } else if let Some(r) = &from.resource_field_ref {
            let mut r = r.clone();
            if r.container_name.as_deref().unwrap_or("").is_empty() {
                r.container_name = Some(c.name.clone());
            }
            Ok(Some(downward::resource_value(
                &self.pod,
                &r,
                self.ctx.node_res,
            )?))
        } else if let Some(k) = &from.config_map_key_ref {
            let cm = self
                .configmaps()
                .get_opt(&k.name)
                .await
                .map_err(self.fetch_error("configmap", &k.name))?;
            match cm.and_then(|cm| cm.data.unwrap_or_default().get(&k.key).cloned()) {
                Some(v) => Ok(Some(v)),
                None if k.optional == Some(true) => Ok(None),
                None => Err(missing("ConfigMap", &k.name, &k.key)),
            }
        } else if let Some(k) = &from.secret_key_ref {
            let s = self
                .secrets()
                .get_opt(&k.name)
                .await
                .map_err(self.fetch_error("secret", &k.name))?;
            match s.and_then(|s| s.data.unwrap_or_default().get(&k.key).cloned()) {
                Some(v) => Ok(Some(String::from_utf8_lossy(&v.0).into_owned())),
                None if k.optional == Some(true) => Ok(None),
                None => Err(missing("Secret", &k.name, &k.key)),
            }
        } else {
            Ok(Some(String::new()))
        }
    }
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
