//! Table-driven tests of configuration parsing and validation.

use super::*;

const SOURCE: &str = r#"
[source]
connection_string = "Endpoint=sb://127.0.0.1:5673/;SharedAccessKeyName=RootManageSharedAccessKey;SharedAccessKey=c2VjcmV0;EntityPath=hub"
"#;

fn endpoints(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| {
            format!(
                "[[endpoints]]\n[endpoints.sink]\ntype = \"webhook\"\nname = \"{n}\"\nurl = \"http://127.0.0.1:1/x\"\n"
            )
        })
        .collect()
}

pub(crate) fn parse(body: &str) -> Result<LoadedConfig> {
    LoadedConfig::parse(Path::new("hubroute.toml"), &format!("{SOURCE}{body}"))
}

#[test]
fn valid_configuration_parses_with_defaults() {
    let text = format!(
        "{}[[routes]]\nname = \"hot\"\ncondition = \"temp > 30\"\nendpoint = \"a\"\n[fallback]\nendpoint = \"a\"\n",
        endpoints(&["a"])
    );
    let loaded = parse(&text).expect("valid");
    let config = &loaded.config;
    assert_eq!(config.hub_name, "hub");
    assert_eq!(config.checkpoint, CheckpointConfig::default());
    assert_eq!(config.endpoints[0].queue_capacity, 16);
    assert_eq!(config.endpoints[0].full_policy, FullPolicy::Block);
    assert_eq!(config.routes[0].source, RouteSource::DeviceMessages);
    assert!(config.routes[0].enabled);
    assert_eq!(config.routes[0].condition.get_ref(), "temp > 30");
    assert_eq!(
        config
            .fallback
            .as_ref()
            .map(|f| f.condition.get_ref().as_str()),
        Some("true")
    );
}

#[test]
fn invalid_configurations_say_what_and_where() {
    let cases: &[(String, &str, usize)] = &[
        (
            format!("{}bogus = 1\n", endpoints(&["a"])),
            "unknown field `bogus`",
            0,
        ),
        (endpoints(&["a", "a"]), "two endpoints are named `a`", 0),
        (endpoints(&["events"]), "is reserved", 0),
        (endpoints(&["a b"]), "name `a b` is invalid", 0),
        (
            format!(
                "{}[[routes]]\nname = \"r\"\nendpoint = \"b\"\n",
                endpoints(&["a"])
            ),
            "refers to endpoint `b`, which is not defined",
            0,
        ),
        (
            format!(
                "{}[[routes]]\nname = \"r\"\nendpoint = \"a\"\n[[routes]]\nname = \"r\"\nendpoint = \"a\"\n",
                endpoints(&["a"])
            ),
            "two routes are named `r`",
            0,
        ),
        (
            format!(
                "{}[[routes]]\nname = \"r\"\nsource = \"Nope\"\nendpoint = \"a\"\n",
                endpoints(&["a"])
            ),
            "unknown variant `Nope`",
            0,
        ),
        (
            format!(
                "{}[[enrichments]]\nkey = \"k\"\nvalue = \"v\"\nendpoints = [\"zz\"]\n",
                endpoints(&["a"])
            ),
            "enrichment `k` refers to endpoint `zz`",
            0,
        ),
        (
            "[checkpoint]\nload_balancing_interval = \"10s\"\nownership_expiry = \"10s\"\n"
                .to_owned(),
            "must be longer than load_balancing_interval",
            0,
        ),
        (
            "[checkpoint]\nowner_id = \"\"\n".to_owned(),
            "owner_id is empty",
            0,
        ),
        (
            "[checkpoint]\nstrategy = \"lazy\"\n".to_owned(),
            "unknown variant `lazy`",
            0,
        ),
        (
            "[checkpoint]\nstore = { kind = \"gcs\", bucket = \"b\" }\n".to_owned(),
            "unknown variant `gcs`",
            0,
        ),
        (
            format!(
                "{}[[routes]]\nname = \"r\"\nendpoint = \"a\"\ncondition = \"{}\"\n",
                endpoints(&["a"]),
                "a".repeat(limits::MAX_CONDITION_CHARS + 1)
            ),
            "the limit is 1024",
            12,
        ),
    ];
    for (text, expected, line) in cases {
        let error = parse(text).expect_err(expected).to_string();
        assert!(error.contains(expected), "{expected:?} not in {error}");
        assert!(error.starts_with("hubroute.toml:"), "{error}");
        if *line > 0 {
            assert!(
                error.starts_with(&format!("hubroute.toml:{line}:")),
                "{error}"
            );
        }
    }
}

#[test]
fn a_shared_checkpoint_store_turns_on_load_balancing() {
    let cases = [
        ("", false),
        ("store = { kind = \"local\", root = \"/tmp/c\" }\n", false),
        (
            "store = { kind = \"azure\", container = \"c\", use_emulator = true }\n",
            true,
        ),
        (
            "store = { kind = \"s3\", bucket = \"b\", region = \"eu-west-1\" }\n",
            true,
        ),
    ];
    for (store, shared) in cases {
        let text = format!(
            "[checkpoint]\n{store}load_balancing_interval = \"2s\"\nownership_expiry = \"6s\"\nstrategy = \"balanced\"\nowner_id = \"pod-1\"\n"
        );
        let checkpoint = parse(&text).expect("valid").config.checkpoint;
        assert_eq!(checkpoint.is_shared(), shared, "{store}");
        assert_eq!(checkpoint.load_balancing_interval, Duration::from_secs(2));
        assert_eq!(checkpoint.ownership_expiry, Duration::from_secs(6));
        assert_eq!(checkpoint.strategy, BalancingStrategy::Balanced);
        assert_eq!(checkpoint.owner_id.as_deref(), Some("pod-1"));
    }
    let defaults = CheckpointConfig::default();
    assert_eq!(
        (
            defaults.load_balancing_interval,
            defaults.ownership_expiry,
            defaults.strategy
        ),
        (
            Duration::from_secs(10),
            Duration::from_secs(60),
            BalancingStrategy::Greedy
        )
    );
}

#[test]
fn too_many_routes_are_rejected() {
    let routes: String = (0..=limits::MAX_ROUTES)
        .map(|i| format!("[[routes]]\nname = \"r{i}\"\nendpoint = \"a\"\n"))
        .collect();
    let error = parse(&format!("{}{routes}", endpoints(&["a"]))).expect_err("too many");
    assert!(
        error.to_string().contains("101 routes; the limit is 100"),
        "{error}"
    );
}

#[test]
fn positions_are_one_based_lines_and_columns() {
    let cases = [
        ("abc", 0, (1, 1)),
        ("ab\ncd", 4, (2, 2)),
        ("a\n\nxyz", 5, (3, 3)),
    ];
    for (text, offset, (line, column)) in cases {
        match position_error(Path::new("f"), text, offset, String::new()) {
            Error::Config {
                line: l, column: c, ..
            } => assert_eq!((l, c), (line, column), "{text:?}"),
            other => panic!("unexpected {other}"),
        }
    }
}

#[test]
fn environment_variables_are_expanded_and_a_missing_one_is_located() {
    let home = std::env::var("HOME").expect("tests run with HOME set");
    let top =
        |line: &str| LoadedConfig::parse(Path::new("hubroute.toml"), &format!("{line}\n{SOURCE}"));
    let loaded = top("hub_name = \"${HOME}\" # not ${EXPANDED} in a comment").expect("expanded");
    assert_eq!(loaded.config.hub_name, home);
    let loaded =
        top("hub_name = 'a#${HOME}' # \"${NOR_HERE}").expect("a # in a string is no comment");
    assert_eq!(loaded.config.hub_name, format!("a#{home}"));

    let cases = [
        (
            "hub_name = \"${HUBROUTE_TEST_NEVER_SET}\"",
            "hubroute.toml:1:13: environment variable `HUBROUTE_TEST_NEVER_SET` is not set",
        ),
        (
            "hub_name = \"${1x}\"",
            "hubroute.toml:1:13: `${1x}` is not a valid",
        ),
        ("hub_name = \"${open\"", "hubroute.toml:1:13: `${` opens"),
    ];
    for (body, expected) in cases {
        let error = top(body).unwrap_err().to_string();
        assert!(error.starts_with(expected), "{body}: {error}");
    }
}

#[test]
fn an_unreadable_file_is_named_without_a_position() {
    let error = LoadedConfig::load(Path::new("/nonexistent/hubroute.toml"))
        .unwrap_err()
        .to_string();
    assert!(
        error.starts_with("/nonexistent/hubroute.toml: cannot read the file:"),
        "{error}"
    );
}

#[test]
fn a_twins_section_takes_a_service_connection_string_with_defaults() {
    const KEY: &str = "c2VydmljZS1rZXktb2YtdGhlLWh1Yi0xMjM0NTY3OA==";
    let loaded = parse(&format!(
        "[twins]\nservice_connection_string = \"HostName=h.azure-devices.net;SharedAccessKeyName=service;SharedAccessKey={KEY}\"\n"
    ))
    .expect("valid");
    let twins = loaded.config.twins.expect("a [twins] section");
    assert_eq!(twins.refresh, Duration::from_secs(300));
    assert!(twins.modules && twins.snapshot && !twins.start_without_twins);
    assert_eq!(twins.page_size, 1000);
    assert_eq!(twins.update_events, TwinUpdateEvents::Patch);
    let sections = parse(&format!(
        "[twins]\nservice_connection_string = \"HostName=h;SharedAccessKeyName=service;SharedAccessKey={KEY}\"\nupdate_events = \"sections\"\n"
    ))
    .expect("valid");
    assert_eq!(
        sections.config.twins.expect("[twins]").update_events,
        TwinUpdateEvents::Sections
    );
    assert_eq!(
        twins.service_connection_string.base_url(),
        "https://h.azure-devices.net"
    );
    assert!(!format!("{twins:?}").contains(KEY), "the key is masked");
    // (section, expected error)
    let cases = [
        (
            format!("service_connection_string = \"HostName=h;DeviceId=d;SharedAccessKey={KEY}\""),
            "not a device connection string",
        ),
        (
            "service_connection_string = \"Endpoint=sb://x/;SharedAccessKeyName=a;SharedAccessKey=b\"".to_owned(),
            "unknown key `endpoint`",
        ),
        (
            format!("service_connection_string = \"HostName=h;SharedAccessKeyName=s;SharedAccessKey={KEY}\"\nrefresh = \"100ms\""),
            "twins.refresh must be at least 1s",
        ),
        (
            format!("service_connection_string = \"HostName=h;SharedAccessKeyName=s;SharedAccessKey={KEY}\"\nupdate_events = \"whole\""),
            "unknown variant `whole`, expected `patch` or `sections`",
        ),
        (
            format!("service_connection_string = \"HostName=h;SharedAccessKeyName=s;SharedAccessKey={KEY}\"\nbogus = 1"),
            "unknown field `bogus`",
        ),
    ];
    for (section, expected) in cases {
        let error = parse(&format!("[twins]\n{section}\n"))
            .expect_err(expected)
            .to_string();
        assert!(error.contains(expected), "{expected:?} not in {error}");
        assert!(!error.contains(KEY), "{error}");
    }
}

#[test]
fn routes_and_enrichments_reading_twin_are_named_for_the_missing_twins_warning() {
    let loaded = parse(&format!(
        "{}[[routes]]\nname = \"by-tag\"\ncondition = \"$TWIN.tags.site = 'a'\"\nendpoint = \"a\"\n\
         [[routes]]\nname = \"plain\"\ncondition = \"level = 'x'\"\nendpoint = \"a\"\n\
         [[enrichments]]\nkey = \"site\"\nvalue = \"$twin.tags.site\"\nendpoints = [\"a\"]\n",
        endpoints(&["a"])
    ))
    .expect("valid");
    assert_eq!(
        loaded.config.twin_readers(),
        ["route `by-tag`", "enrichment `site`"]
    );
}
