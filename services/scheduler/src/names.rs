//! One namespace for names (pure): a service `web`, its tasks `web.N` and one-off
//! containers share it, since `exec`, `logs`, `inspect` and `rm` resolve any of them by
//! name. A container may not take a service's name or a name of the form `SERVICE.N`
//! (its task slots, now or after a scale or a rollout), and a service may not be made
//! while a container holds its name or one of its task names.

use rctl_api::pb::Task;

/// Who holds a name a new container or service would take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// The service of that name.
    Service(String),
    /// A task name of the service (whether or not the slot is in use now).
    Task { service: String },
    /// A one-off container, by name and id.
    Container { name: String, id: String },
}

impl std::fmt::Display for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Owner::Service(s) => write!(f, "service {s}"),
            Owner::Task { service } => write!(f, "the tasks of service {service}"),
            Owner::Container { name, id } => write!(f, "container {name} ({id})"),
        }
    }
}

/// The service whose task slot `name` is (`web.3` → `web`), if it has that form.
fn task_service(name: &str) -> Option<&str> {
    let (svc, slot) = name.rsplit_once('.')?;
    (!slot.is_empty() && slot.bytes().all(|b| b.is_ascii_digit())).then_some(svc)
}

/// Who holds `name` among `services` (by name), for a container about to take it.
pub fn for_container<'a>(name: &str, mut services: impl Iterator<Item = &'a str>) -> Option<Owner> {
    services.find_map(|s| {
        if s == name {
            Some(Owner::Service(s.to_string()))
        } else if task_service(name) == Some(s) {
            Some(Owner::Task {
                service: s.to_string(),
            })
        } else {
            None
        }
    })
}

/// The container among `containers` holding service `service`'s name or one of its task
/// names, for a service about to be made or scaled.
pub fn for_service(service: &str, containers: &[Task]) -> Option<Owner> {
    containers
        .iter()
        .find(|c| c.container_name == service || task_service(&c.container_name) == Some(service))
        .map(|c| Owner::Container {
            name: c.container_name.clone(),
            id: c.id.clone(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(name: &str) -> Task {
        Task {
            id: format!("id-{name}"),
            container_name: name.into(),
            ..Default::default()
        }
    }

    #[test]
    fn services_tasks_and_containers_share_one_namespace() {
        let services = ["web", "db"];
        let owner = |n: &str| for_container(n, services.iter().copied());
        assert_eq!(owner("web"), Some(Owner::Service("web".into())));
        assert_eq!(
            owner("web.1"),
            Some(Owner::Task {
                service: "web".into()
            })
        );
        assert_eq!(
            owner("db.12"),
            Some(Owner::Task {
                service: "db".into()
            })
        );
        for free in ["web.", "web.x", "web1", "web.1.2", "api", "webs.1", "q1"] {
            assert_eq!(owner(free), None, "{free}");
        }

        let cs = [container("q1"), container("web.5")];
        assert_eq!(
            for_service("web", &cs),
            Some(Owner::Container {
                name: "web.5".into(),
                id: "id-web.5".into()
            })
        );
        assert_eq!(
            for_service("q1", &cs).map(|o| o.to_string()).as_deref(),
            Some("container q1 (id-q1)")
        );
        assert_eq!(for_service("db", &cs), None);
        assert_eq!(for_service("web.5x", &cs), None);
    }
}
