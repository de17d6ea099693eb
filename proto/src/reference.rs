//! Image references (`[DOMAIN/]PATH[:TAG][@DIGEST]`), parsed by hand to Docker's grammar
//! (distribution/reference): one rule for the CLI (before it sends a reference), the
//! scheduler (before it writes a spec) and the agent (before it pulls).
//!
//! Why not `str::parse::<oci_client::Reference>()`: oci-spec matches references with one
//! regex whose tag part is `[\w][\w.-]{0,127}`; the `regex` crate's `\w` is Unicode, so the
//! compiled NFA is about 4.4 MB, built on the first pull (with an 8 MB peak on the way) and
//! kept for the life of the process. That was a third of the agent's anonymous memory with
//! 50 containers. Docker's grammar (Go's RE2) means ASCII `\w`, which is what this accepts.
//!
//! Vocabulary: the *registry* (domain) is the host a reference is pulled from; the
//! *repository* is the path inside it; a reference names a *tag*, a *digest* or both.

use std::fmt;

const DOCKER_HUB: &str = "docker.io";
/// Names Docker Hub goes by in references and in docker's `config.json`.
const DOCKER_HUB_ALIASES: [&str; 2] = ["index.docker.io", "registry-1.docker.io"];
const DOCKER_HUB_LEGACY: &str = "index.docker.io";
const OFFICIAL_REPOS: &str = "library";
const DEFAULT_TAG: &str = "latest";
/// The longest repository path Docker accepts.
const NAME_MAX: usize = 255;
const TAG_MAX: usize = 128;

/// Why a reference was refused (one line, shown to the user after the reference).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    #[error("empty image reference")]
    Empty,
    #[error("invalid reference format")]
    Format,
    #[error("repository name longer than {NAME_MAX} characters")]
    NameTooLong,
    #[error("invalid digest (expected sha256:64 hex, sha384:96 or sha512:128)")]
    Digest,
}

/// A reference as Docker normalises it: `busybox` is `docker.io/library/busybox:latest`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    registry: String,
    repository: String,
    /// `None` only when a digest is given without a tag.
    tag: Option<String>,
    digest: Option<String>,
}

impl Reference {
    /// The registry host (`docker.io`, `h:5000`, `localhost`).
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The path inside the registry (`library/busybox`).
    pub fn repository(&self) -> &str {
        &self.repository
    }

    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    pub fn digest(&self) -> Option<&str> {
        self.digest.as_deref()
    }

    /// The normalised reference as one string: `docker.io/library/busybox:latest`.
    pub fn whole(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// [`parse`], with a refusal worded for one error line: `invalid image reference "…": why`,
/// where a reference of any length is shown by its first characters and its length only
/// (a 100,000-character tag must not become a 100,000-character error).
pub fn check(s: &str) -> Result<Reference, String> {
    parse(s).map_err(|e| {
        const SHOWN: usize = 100;
        let n = s.chars().count();
        let shown = if n > SHOWN {
            let head: String = s.chars().take(SHOWN).collect();
            format!("{head:?}... ({n} characters)")
        } else {
            format!("{s:?}")
        };
        format!("invalid image reference {shown}: {e}")
    })
}

/// Parses `s` as Docker does: `busybox` is `docker.io/library/busybox:latest`; a first
/// path component is a registry only if it has a `.` or a `:` or is `localhost`.
pub fn parse(s: &str) -> Result<Reference, ReferenceError> {
    if s.is_empty() {
        return Err(ReferenceError::Empty);
    }
    let (rest, digest) = match s.split_once('@') {
        Some((rest, digest)) => (rest, Some(digest)),
        None => (s, None),
    };
    // A tag's colon comes after the last slash; a port's comes before it.
    let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match rest[last_slash..].rfind(':') {
        Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
        None => (rest, None),
    };
    if tag.is_some_and(|t| !valid_tag(t)) || !valid_name(name) {
        return Err(ReferenceError::Format);
    }
    if let Some(d) = digest {
        check_digest(d)?;
    }
    let (registry, repository) = split_domain(name);
    if repository.len() > NAME_MAX {
        return Err(ReferenceError::NameTooLong);
    }
    let tag = match (tag, digest) {
        (None, None) => Some(DEFAULT_TAG),
        (t, _) => t,
    };
    Ok(Reference {
        registry,
        repository,
        tag: tag.map(str::to_string),
        digest: digest.map(str::to_string),
    })
}

/// The registry host `reference` is pulled from, by Docker's rule (a first path component
/// with a `.` or a `:`, or `localhost`, is a registry; else Docker Hub): what [`parse`]
/// gives as [`Reference::registry`], without needing a valid reference, so an error
/// message can name the registry of whatever the user typed.
pub fn registry_of(reference: &str) -> &str {
    match reference.split_once('/') {
        Some((first, _)) if is_domain(first) && first != DOCKER_HUB_LEGACY => first,
        _ => DOCKER_HUB,
    }
}

/// The registry host a docker `config.json` `auths` key names, as [`registry_of`] names
/// it: `https://index.docker.io/v1/` → `docker.io`, `http://h:5000/` → `h:5000`.
pub fn registry_of_auth_key(key: &str) -> &str {
    let k = key
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    canonical_registry(k.split('/').next().unwrap_or(k))
}

/// Docker Hub under its one name (as credentials are looked up); any other host as given.
pub fn canonical_registry(host: &str) -> &str {
    if DOCKER_HUB_ALIASES.contains(&host) {
        DOCKER_HUB
    } else {
        host
    }
}

/// Docker's test for a first path component that names a registry.
fn is_domain(first: &str) -> bool {
    first.contains(['.', ':']) || first == "localhost"
}

/// `[\w][\w.-]{0,127}`, `\w` ASCII.
fn valid_tag(t: &str) -> bool {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= TAG_MAX
        && word(b[0])
        && b[1..].iter().all(|&c| word(c) || c == b'.' || c == b'-')
}

/// `[DOMAIN/]COMPONENT[/COMPONENT...]`: valid if the components all are path components,
/// or the first is a domain and the rest are.
fn valid_name(name: &str) -> bool {
    let parts: Vec<&str> = name.split('/').collect();
    let paths_from = |i: usize| parts.len() > i && parts[i..].iter().all(|p| valid_component(p));
    paths_from(0) || (valid_domain(parts[0]) && paths_from(1))
}

/// `[a-z0-9]+` joined by `.`, `_`, `__` or any run of `-`.
fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        if !(sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-')) {
            return false;
        }
    }
    true
}

/// `label(.label)*[:port]`, a label `[a-zA-Z0-9]` or `[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]`.
fn valid_domain(d: &str) -> bool {
    let (host, port) = match d.split_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (d, None),
    };
    let label = |l: &str| {
        let b = l.as_bytes();
        !b.is_empty()
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric()
            && b.iter().all(|&x| x.is_ascii_alphanumeric() || x == b'-')
    };
    host.split('.').all(label)
        && port.is_none_or(|p| !p.is_empty() && p.bytes().all(|x| x.is_ascii_digit()))
}

/// `ALGORITHM:HEX`, with the hex length the algorithm's.
fn check_digest(d: &str) -> Result<(), ReferenceError> {
    let (alg, hex) = d.split_once(':').ok_or(ReferenceError::Digest)?;
    let want = match alg {
        "sha256" => 64,
        "sha384" => 96,
        "sha512" => 128,
        _ => return Err(ReferenceError::Digest),
    };
    if hex.len() == want && hex.bytes().all(|x| x.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(ReferenceError::Digest)
    }
}

/// Docker's normalisation: the registry if the first component names one, else Docker Hub
/// (with `library/` for a one-component name).
fn split_domain(name: &str) -> (String, String) {
    let registry = registry_of(name);
    let rest = match name.split_once('/') {
        Some((first, rest)) if is_domain(first) => rest,
        _ => name,
    };
    let repository = if registry == DOCKER_HUB && !rest.contains('/') {
        format!("{OFFICIAL_REPOS}/{rest}")
    } else {
        rest.to_string()
    };
    (registry.to_string(), repository)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_reference_of_any_length_makes_a_short_line() {
        let long = format!("h:5000/a:{}", "b".repeat(100_000));
        let e = check(&long).unwrap_err();
        assert!(e.len() < 200, "{e}");
        assert!(
            e.contains("(100009 characters)")
                && e.starts_with("invalid image reference \"h:5000/a:bbb"),
            "{e}"
        );
        assert_eq!(
            check("a b").unwrap_err(),
            "invalid image reference \"a b\": invalid reference format"
        );
        assert!(check("h:5000/a:v1").is_ok());
    }

    const SHA256: &str = "sha256:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff";

    #[test]
    fn good_references_normalise_as_dockers() {
        let d512 = format!("sha512:{}", "f".repeat(128));
        for (input, registry, repository, tag, digest) in [
            (
                "busybox",
                "docker.io",
                "library/busybox",
                Some("latest"),
                None,
            ),
            (
                "test.com:tag",
                "docker.io",
                "library/test.com",
                Some("tag"),
                None,
            ),
            (
                "test.com:5000",
                "docker.io",
                "library/test.com",
                Some("5000"),
                None,
            ),
            ("test.com/repo:tag", "test.com", "repo", Some("tag"), None),
            ("test:5000/repo", "test:5000", "repo", Some("latest"), None),
            (
                &format!("test:5000/repo@{SHA256}"),
                "test:5000",
                "repo",
                None,
                Some(SHA256),
            ),
            (
                &format!("test:5000/repo:tag@{SHA256}"),
                "test:5000",
                "repo",
                Some("tag"),
                Some(SHA256),
            ),
            (
                "lowercase:Uppercase",
                "docker.io",
                "library/lowercase",
                Some("Uppercase"),
                None,
            ),
            (
                "sub-dom1.foo.com/bar/baz/quux",
                "sub-dom1.foo.com",
                "bar/baz/quux",
                Some("latest"),
                None,
            ),
            (
                "b.gcr.io/test.example.com/my-app:test.example.com",
                "b.gcr.io",
                "test.example.com/my-app",
                Some("test.example.com"),
                None,
            ),
            (
                &format!("xn--7o8h.com/myimage:xn--7o8h.com@{d512}"),
                "xn--7o8h.com",
                "myimage",
                Some("xn--7o8h.com"),
                Some(d512.as_str()),
            ),
            (
                "foo_bar.com:8080",
                "docker.io",
                "library/foo_bar.com",
                Some("8080"),
                None,
            ),
            (
                "foo/foo_bar.com:8080",
                "docker.io",
                "foo/foo_bar.com",
                Some("8080"),
                None,
            ),
            (
                "opensuse/leap:15.3",
                "docker.io",
                "opensuse/leap",
                Some("15.3"),
                None,
            ),
            (
                "index.docker.io/x/y",
                "docker.io",
                "x/y",
                Some("latest"),
                None,
            ),
            (
                "localhost/a__b--c.d",
                "localhost",
                "a__b--c.d",
                Some("latest"),
                None,
            ),
            (
                "198.18.0.1:5000/rctl/busybox:latest",
                "198.18.0.1:5000",
                "rctl/busybox",
                Some("latest"),
                None,
            ),
        ] {
            let r = parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(r.registry(), registry, "{input}");
            assert_eq!(r.repository(), repository, "{input}");
            assert_eq!(r.tag(), tag, "{input}");
            assert_eq!(r.digest(), digest, "{input}");
        }
    }

    #[test]
    fn bad_references_are_refused() {
        use ReferenceError::*;
        let long = "a".repeat(256);
        for (input, err) in [
            ("", Empty),
            (":justtag", Format),
            (&format!("@{SHA256}"), Format),
            ("repo@sha256:ffffffffffffffffffffffffffffffffff", Digest),
            (
                &format!("validname@invaliddigest:{}", "f".repeat(64)),
                Digest,
            ),
            ("Uppercase:tag", Format),
            ("test:5000/Uppercase/lowercase:tag", Format),
            (long.as_str(), NameTooLong),
            ("aa/asdf$$^/aa", Format),
            ("repo:", Format),
            ("repo:-tag", Format),
            ("repo:täg", Format),
            (&format!("repo:{}", "t".repeat(129)), Format),
            ("a//b", Format),
            ("a/b/", Format),
            ("a..b", Format),
            ("-a", Format),
            ("host:port/repo", Format),
        ] {
            assert_eq!(parse(input).map(|_| ()), Err(err), "{input}");
        }
    }

    #[test]
    fn the_longest_tag_is_accepted() {
        let input = format!("repo:{}", "t".repeat(128));
        assert_eq!(parse(&input).unwrap().tag(), Some("t".repeat(128).as_str()));
    }

    #[test]
    fn whole_writes_the_normalised_reference() {
        assert_eq!(
            parse("busybox").unwrap().whole(),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(
            parse(&format!("h:5000/a:v1@{SHA256}")).unwrap().whole(),
            format!("h:5000/a:v1@{SHA256}")
        );
        assert_eq!(
            parse(&format!("a@{SHA256}")).unwrap().to_string(),
            format!("docker.io/library/a@{SHA256}")
        );
    }

    #[test]
    fn every_digest_the_agent_pulls_is_accepted() {
        // The CLI once took only sha256 while the agent also pulls sha384 and sha512.
        for (alg, n) in [("sha256", 64), ("sha384", 96), ("sha512", 128)] {
            let d = format!("{alg}:{}", "a".repeat(n));
            let r = parse(&format!("h:5000/a@{d}")).unwrap_or_else(|e| panic!("{alg}: {e}"));
            assert_eq!(r.digest(), Some(d.as_str()));
            let short = format!("h:5000/a@{alg}:{}", "a".repeat(n - 1));
            assert_eq!(parse(&short), Err(ReferenceError::Digest), "{alg}");
        }
    }

    #[test]
    fn the_cli_examples_are_judged_as_before() {
        let d = format!("sha256:{}", "a".repeat(64));
        for ok in [
            "busybox".to_string(),
            "127.0.0.1:5000/rctl/busybox:latest".to_string(),
            format!("127.0.0.1:5000/rctl/busybox@{d}"),
            format!("h:5000/a/b:v1.2-x_y@{d}"),
        ] {
            assert!(parse(&ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "Busybox",
            "h:5000/a@sha256:1234",
            "h:5000/a:",
            "h:5000/a:b c",
            "h:5000//a",
            "h:5000/",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn registries_are_read_from_references_like_docker() {
        for (reference, registry) in [
            ("127.0.0.1:5000/rctl/busybox:1", "127.0.0.1:5000"),
            ("127.0.0.1:5000/rctl/x:1", "127.0.0.1:5000"),
            ("reg.example/team/web", "reg.example"),
            ("localhost/a", "localhost"),
            ("localhost/web:1", "localhost"),
            ("ghcr.io/o/i", "ghcr.io"),
            ("library/busybox", "docker.io"),
            ("rctl/busybox:latest", "docker.io"),
            ("busybox", "docker.io"),
            ("index.docker.io/x/y", "docker.io"),
            // Not a valid reference, still a registry to name in an error.
            ("Reg.Example/Web", "Reg.Example"),
        ] {
            assert_eq!(registry_of(reference), registry, "{reference}");
            if let Ok(r) = parse(reference) {
                assert_eq!(r.registry(), registry, "{reference}");
            }
        }
    }

    #[test]
    fn auth_keys_name_registries_as_references_do() {
        for (key, registry) in [
            ("https://index.docker.io/v1/", "docker.io"),
            ("registry-1.docker.io", "docker.io"),
            ("docker.io", "docker.io"),
            ("http://h:5000/", "h:5000"),
            ("h:5000", "h:5000"),
            ("reg.example:5000", "reg.example:5000"),
        ] {
            assert_eq!(registry_of_auth_key(key), registry, "{key}");
        }
        assert_eq!(canonical_registry("index.docker.io"), "docker.io");
        assert_eq!(canonical_registry("ghcr.io"), "ghcr.io");
    }
}
