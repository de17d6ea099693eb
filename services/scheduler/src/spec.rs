//! Validation of service specs and scale targets at the API edge, and the rule for when a
//! change makes a new revision.

use rctl_api::keys::valid_name;
use rctl_api::pb::ServiceSpec;
use rctl_api::placement::{validate_spread, validate_strategy, Constraint};
use rctl_api::routing::Protocol;
use rctl_api::runnable::Unrunnable;

/// Most replicas one service may ask for.
pub const MAX_REPLICAS: i64 = 10_000;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    #[error("invalid service name {0:?}: use lowercase letters, digits and '-', at most 63")]
    Name(String),
    #[error("service {0:?} has no image")]
    NoImage(String),
    #[error("{0}")]
    Image(String),
    #[error("replicas must be between 0 and {MAX_REPLICAS}, got {0}")]
    Replicas(i64),
    #[error("port.container must be between 1 and 65535, got {0}")]
    ContainerPort(u32),
    #[error("port.protocol must be {one_of}, got {0:?}", one_of = Protocol::ONE_OF)]
    Protocol(String),
    /// What a task or rctl-lb would refuse only after the spec was stored.
    #[error("{0}")]
    Unrunnable(#[from] Unrunnable),
    #[error("placement.constraints: {0}")]
    Constraint(String),
    #[error("placement.strategy: {0}")]
    Strategy(String),
    #[error("placement.spread: {0}")]
    Spread(String),
    #[error("canary.steps: must list at least one percentage")]
    CanaryNoSteps,
    #[error("canary.steps: must be increasing percentages between 1 and 100, got {0:?}")]
    CanarySteps(Vec<u32>),
    #[error("canary.replicas: must be at least 1, got 0")]
    CanaryReplicas,
}

/// `image` and why the reference grammar refuses it, if it does, for one error line.
pub fn check_reference(image: &str) -> Result<(), String> {
    rctl_api::reference::check(image).map(|_| ())
}

pub fn validate(spec: &ServiceSpec) -> Result<(), SpecError> {
    if !valid_name(&spec.name) {
        return Err(SpecError::Name(spec.name.clone()));
    }
    if spec.image.trim().is_empty() {
        return Err(SpecError::NoImage(spec.name.clone()));
    }
    check_reference(&spec.image).map_err(SpecError::Image)?;
    validate_replicas(spec.replicas as i64)?;
    if let Some(p) = &spec.port {
        if p.container == 0 || p.container > 65535 {
            return Err(SpecError::ContainerPort(p.container));
        }
        if Protocol::parse(&p.protocol).is_none() {
            return Err(SpecError::Protocol(p.protocol.clone()));
        }
    }
    rctl_api::runnable::check(spec)?;
    if let Some(p) = &spec.placement {
        for c in &p.constraints {
            Constraint::parse(c).map_err(SpecError::Constraint)?;
        }
        validate_spread(&p.spread).map_err(SpecError::Spread)?;
        validate_strategy(&p.strategy, &p.spread).map_err(SpecError::Strategy)?;
    }
    if let Some(c) = &spec.canary {
        // An empty list would send all traffic to the canary at once, and 0 replicas
        // would silently run one: the CLI sends its default of [100] explicitly.
        if c.steps.is_empty() {
            return Err(SpecError::CanaryNoSteps);
        }
        if c.steps.iter().any(|s| *s == 0 || *s > 100) || c.steps.windows(2).any(|w| w[0] >= w[1]) {
            return Err(SpecError::CanarySteps(c.steps.clone()));
        }
        if c.replicas == 0 {
            return Err(SpecError::CanaryReplicas);
        }
    }
    Ok(())
}

/// The other service among `services` that rctl-lb already serves on an address `spec`'s
/// `port.listen` would need: the same port on the same IP, or on any IP when either is the
/// unspecified address (one of the two binds would fail).
pub fn listen_owner<'a>(
    spec: &ServiceSpec,
    services: impl IntoIterator<Item = &'a ServiceSpec>,
) -> Option<&'a ServiceSpec> {
    let listen = |s: &ServiceSpec| {
        let p = s.port.as_ref()?;
        rctl_api::runnable::listen(&p.listen).ok().flatten()
    };
    let want = listen(spec)?;
    services.into_iter().find(|other| {
        other.name != spec.name
            && listen(other).is_some_and(|have| {
                have.port() == want.port()
                    && (have.ip() == want.ip()
                        || have.ip().is_unspecified()
                        || want.ip().is_unspecified())
            })
    })
}

pub fn validate_replicas(n: i64) -> Result<(), SpecError> {
    if (0..=MAX_REPLICAS).contains(&n) {
        Ok(())
    } else {
        Err(SpecError::Replicas(n))
    }
}

/// Whether going from `old` to `new` changes what runs (a new revision), rather than only
/// how many replicas run or how the next rollout goes (`[update]`, `[canary]`).
pub fn changes_revision(old: &ServiceSpec, new: &ServiceSpec) -> bool {
    // What only rctl-lb acts on (TLS, PROXY protocol, timeouts, sticky canary) changes no
    // container: applying it must not roll every task.
    let strip = |s: &ServiceSpec| ServiceSpec {
        replicas: 0,
        update: None,
        canary: None,
        sticky: String::new(),
        port: s.port.clone().map(|p| rctl_api::pb::PortSpec {
            tls: Vec::new(),
            proxy_protocol: String::new(),
            request_timeout_ms: 0,
            idle_timeout_ms: 0,
            ..p
        }),
        ..s.clone()
    };
    strip(old) != strip(new)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rctl_api::pb::PortSpec;

    #[test]
    fn a_listen_address_has_one_owner() {
        let svc = |name: &str, listen: &str| ServiceSpec {
            name: name.into(),
            port: Some(PortSpec {
                container: 80,
                listen: listen.into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let others = [
            svc("web", "127.0.0.1:8080"),
            svc("all", "0.0.0.0:9090"),
            svc("quiet", ""),
        ];
        let owner = |s: ServiceSpec| listen_owner(&s, &others).map(|o| o.name.clone());
        assert_eq!(owner(svc("api", "127.0.0.1:8080")).as_deref(), Some("web"));
        assert_eq!(owner(svc("api", "0.0.0.0:8080")).as_deref(), Some("web"));
        assert_eq!(owner(svc("api", "127.0.0.2:9090")).as_deref(), Some("all"));
        assert_eq!(owner(svc("api", "127.0.0.2:8080")), None);
        assert_eq!(owner(svc("api", "127.0.0.1:8081")), None);
        assert_eq!(owner(svc("api", "")), None);
        // A service keeps its own address across applies.
        assert_eq!(owner(svc("web", "127.0.0.1:8080")), None);
    }

    fn spec() -> ServiceSpec {
        ServiceSpec {
            name: "web".into(),
            image: "198.18.0.1:7603/rctl/testserver:v1".into(),
            replicas: 2,
            port: Some(PortSpec {
                container: 8080,
                protocol: "http".into(),
                listen: "127.0.0.1:8080".into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_good_spec_passes() {
        assert_eq!(validate(&spec()), Ok(()));
    }

    #[test]
    fn bad_specs_are_named() {
        let mut s = spec();
        s.image = "".into();
        assert_eq!(validate(&s), Err(SpecError::NoImage("web".into())));
        let mut s = spec();
        s.image = "bad image".into();
        assert!(matches!(validate(&s), Err(SpecError::Image(_))));
        let mut s = spec();
        s.name = "Web".into();
        assert!(matches!(validate(&s), Err(SpecError::Name(_))));
        let mut s = spec();
        s.port.as_mut().unwrap().protocol = "udp".into();
        assert!(matches!(validate(&s), Err(SpecError::Protocol(_))));
        let mut s = spec();
        s.port.as_mut().unwrap().listen = "nowhere".into();
        assert!(matches!(
            validate(&s),
            Err(SpecError::Unrunnable(Unrunnable::Listen(_)))
        ));
        let mut s = spec();
        s.health = Some(rctl_api::pb::HealthSpec {
            http: "healthz now".into(),
            ..Default::default()
        });
        assert!(matches!(
            validate(&s),
            Err(SpecError::Unrunnable(Unrunnable::HealthPath(_)))
        ));
        s.health.as_mut().unwrap().http = "/healthz".into();
        assert_eq!(validate(&s), Ok(()));
        assert_eq!(validate_replicas(-1), Err(SpecError::Replicas(-1)));
        let mut s = spec();
        s.placement = Some(rctl_api::pb::Placement {
            spread: "zone".into(),
            constraints: vec!["role == web".into(), "node.name != h2".into()],
            ..Default::default()
        });
        assert_eq!(validate(&s), Ok(()));
        s.placement
            .as_mut()
            .unwrap()
            .constraints
            .push("role = web".into());
        let e = validate(&s).unwrap_err();
        assert!(matches!(e, SpecError::Constraint(_)));
        assert!(e.to_string().starts_with("placement.constraints: "), "{e}");
        s.placement.as_mut().unwrap().constraints.pop();
        s.placement.as_mut().unwrap().strategy = "binpack".into();
        let e = validate(&s).unwrap_err();
        assert!(
            matches!(e, SpecError::Strategy(_)),
            "binpack with a spread key: {e}"
        );
        s.placement.as_mut().unwrap().spread.clear();
        assert_eq!(validate(&s), Ok(()));
        s.placement.as_mut().unwrap().strategy = "pack".into();
        assert!(matches!(validate(&s), Err(SpecError::Strategy(_))));
        s.placement.as_mut().unwrap().strategy.clear();
        s.placement.as_mut().unwrap().spread = "a zone".into();
        assert!(matches!(validate(&s), Err(SpecError::Spread(_))));
    }

    #[test]
    fn canaries_that_cannot_step_are_refused() {
        let canary = |replicas, steps: &[u32]| {
            let mut s = spec();
            s.canary = Some(rctl_api::pb::CanarySpec {
                replicas,
                steps: steps.to_vec(),
                ..Default::default()
            });
            validate(&s)
        };
        assert_eq!(canary(1, &[100]), Ok(()));
        assert_eq!(canary(2, &[5, 50, 100]), Ok(()));
        assert_eq!(canary(1, &[]), Err(SpecError::CanaryNoSteps));
        assert_eq!(canary(0, &[10, 100]), Err(SpecError::CanaryReplicas));
        for bad in [&[0][..], &[100, 50], &[5, 5], &[150]] {
            assert_eq!(canary(1, bad), Err(SpecError::CanarySteps(bad.to_vec())));
        }
    }

    #[test]
    fn a_reference_over_the_grammar_is_refused_in_one_short_line() {
        let mut s = spec();
        s.image = format!("198.18.0.1:7603/rctl/testserver:{}", "b".repeat(100_000));
        let e = validate(&s).unwrap_err().to_string();
        assert!(e.contains("(100032 characters)"), "{e:.300}");
        assert!(e.len() < 300 && !e.contains('\n'), "{e:.300}");
        s.image = format!("198.18.0.1:7603/rctl/testserver:{}", "b".repeat(129));
        assert!(matches!(validate(&s), Err(SpecError::Image(_))));
        s.image = format!("198.18.0.1:7603/rctl/testserver:{}", "b".repeat(128));
        assert_eq!(validate(&s), Ok(()));
    }

    #[test]
    fn only_scaling_keeps_the_revision() {
        let a = spec();
        let mut b = spec();
        b.replicas = 9;
        assert!(!changes_revision(&a, &b));
        b.update = Some(rctl_api::pb::UpdateSpec {
            max_surge: 2,
            ..Default::default()
        });
        b.canary = Some(Default::default());
        assert!(
            !changes_revision(&a, &b),
            "rollout settings are not a revision"
        );
        b.image = "x:2".into();
        assert!(changes_revision(&a, &b));
    }

    #[test]
    fn load_balancer_settings_make_no_revision() {
        let old = spec();
        let mut new = spec();
        new.sticky = "header:X-User".into();
        let port = new.port.as_mut().unwrap();
        port.proxy_protocol = "v2".into();
        port.request_timeout_ms = 5_000;
        port.idle_timeout_ms = 9_000;
        assert!(!changes_revision(&old, &new));
        new.port.as_mut().unwrap().container = 9090;
        assert!(changes_revision(&old, &new));
    }
}
