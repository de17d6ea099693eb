//! `rctl rollout history NAME` and `rctl rollback NAME [--to N]`: a service's kept
//! revisions, and going back to one of them through the ordinary (surge-first) update path.

use std::time::Duration;

use rctl_api::pb::{Revision, RevisionHistoryRequest, RollbackRequest};
use serde::Serialize;

use crate::client::Conn;
use crate::error::CliError;
use crate::output::{print_json, print_table, rfc3339, Format};

/// One entry of `rollout history -o json` (stable field names).
#[derive(Debug, Serialize, PartialEq)]
pub struct RevisionJson {
    pub revision: u64,
    pub image: String,
    pub who: String,
    pub why: String,
    pub created: String,
    /// True for the revision the service runs (or rolls to) now.
    pub current: bool,
}

pub fn revision_json(r: &Revision, current: u64) -> RevisionJson {
    let cause = r.cause.clone().unwrap_or_default();
    RevisionJson {
        revision: r.revision,
        image: r.spec.as_ref().map(|s| s.image.clone()).unwrap_or_default(),
        who: cause.who,
        why: cause.why,
        created: rfc3339(cause.unix_ms),
        current: r.revision == current,
    }
}

/// Who the CLI says makes a change; a client certificate's CN overrides it on the server.
pub fn who() -> String {
    std::env::var("USER").unwrap_or_default()
}

pub async fn history(conn: &mut Conn, name: &str, format: Format) -> Result<(), CliError> {
    let svc = conn
        .client
        .inspect_service(rctl_api::pb::InspectServiceRequest { name: name.into() })
        .await
        .map_err(|s| conn.err(s))?
        .into_inner()
        .service
        .unwrap_or_default();
    let revisions = conn
        .client
        .revision_history(RevisionHistoryRequest {
            service: name.into(),
        })
        .await
        .map_err(|s| conn.err(s))?
        .into_inner()
        .revisions;
    let rows: Vec<RevisionJson> = revisions
        .iter()
        .map(|r| revision_json(r, svc.revision))
        .collect();
    match format {
        Format::Json => print_json(&rows),
        Format::Table => print_table(
            &["REVISION", "IMAGE", "CREATED", "BY", "CHANGE"],
            &rows
                .iter()
                .map(|r| {
                    let mark = if r.current { " *" } else { "" };
                    vec![
                        format!("{}{mark}", r.revision),
                        r.image.clone(),
                        r.created.clone(),
                        r.who.clone(),
                        r.why.clone(),
                    ]
                })
                .collect::<Vec<_>>(),
        ),
    }
    Ok(())
}

pub async fn rollback(
    conn: &mut Conn,
    name: &str,
    to: Option<u64>,
    message: Option<String>,
    wait: bool,
    timeout: Duration,
) -> Result<(), CliError> {
    let req = RollbackRequest {
        service: name.into(),
        to: to.unwrap_or(0),
        who: who(),
        message: message.unwrap_or_default(),
    };
    let resp = conn
        .write(|mut c| {
            let req = req.clone();
            async move { c.rollback(req).await }
        })
        .await?;
    let rev = resp.service.map(|s| s.revision).unwrap_or(0);
    println!(
        "service {name} rolled back to revision {} (as revision {rev})",
        resp.from_revision
    );
    if wait {
        crate::wait::services(conn, &[name.to_string()], timeout).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rctl_api::pb::{RevisionCause, ServiceSpec};

    #[test]
    fn history_rows_carry_who_why_and_the_current_mark() {
        let r = Revision {
            service: "web".into(),
            revision: 2,
            spec: Some(ServiceSpec {
                image: "web:2".into(),
                ..Default::default()
            }),
            cause: Some(RevisionCause {
                who: "ann".into(),
                why: "image: web:1 → web:2".into(),
                unix_ms: 1_700_000_000_000,
            }),
        };
        let j = revision_json(&r, 2);
        assert_eq!(
            j,
            RevisionJson {
                revision: 2,
                image: "web:2".into(),
                who: "ann".into(),
                why: "image: web:1 → web:2".into(),
                created: "2023-11-14T22:13:20Z".into(),
                current: true,
            }
        );
        assert!(!revision_json(&r, 3).current);
    }
}
