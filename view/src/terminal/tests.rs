//! Rendering tests on ratatui's `TestBackend`: the screen at many widths and heights, the
//! disconnected state, colours and keys.

use ratatui::Terminal;
use ratatui::backend::TestBackend;
use ratatui::buffer::Buffer;
use ratatui::crossterm::event::{KeyCode, KeyModifiers};
use ratatui::style::{Color, Modifier};

use super::render::{Connection, Screen, Section, SortOrder};
use super::{apply_key, plain_line};
use crate::exposition::Scrape;
use crate::routes::RoutesInfo;
use crate::status::Status;

/// A quick-start-like service: three routes, three endpoints, four partitions.
fn metrics(scale: u64) -> String {
    let n = |base: u64| base * scale;
    format!(
        "# TYPE hubroute_events_routed counter\n\
         hubroute_events_routed_total {}\n\
         hubroute_route_matched_total{{route=\"archive\"}} {}\n\
         hubroute_route_matched_total{{route=\"hot-temperature\"}} {}\n\
         hubroute_route_matched_total{{route=\"high-severity\"}} {}\n\
         hubroute_route_undefined_total{{route=\"archive\"}} 0\n\
         hubroute_route_undefined_total{{route=\"hot-temperature\"}} {}\n\
         hubroute_route_undefined_total{{route=\"high-severity\"}} 0\n\
         hubroute_endpoint_delivered_total{{endpoint=\"lake\"}} {}\n\
         hubroute_endpoint_delivered_total{{endpoint=\"alerts-db\"}} {}\n\
         hubroute_endpoint_delivered_total{{endpoint=\"alerts-hook\"}} {}\n\
         hubroute_endpoint_failed_total{{endpoint=\"alerts-hook\"}} 3\n\
         hubroute_endpoint_dead_lettered_total{{endpoint=\"alerts-hook\"}} 3\n\
         hubroute_endpoint_queue_depth{{endpoint=\"lake\"}} 2\n\
         hubroute_endpoint_health{{endpoint=\"lake\",status=\"healthy\"}} 1\n\
         hubroute_endpoint_health{{endpoint=\"alerts-db\",status=\"healthy\"}} 1\n\
         hubroute_endpoint_health{{endpoint=\"alerts-hook\",status=\"dead\"}} 1\n\
         hubroute_endpoint_commit_latency_seconds_bucket{{endpoint=\"lake\",le=\"0.5\"}} {}\n\
         hubroute_endpoint_commit_latency_seconds_bucket{{endpoint=\"lake\",le=\"+Inf\"}} {}\n\
         hubroute_endpoint_parked_rows_total{{endpoint=\"alerts-hook\"}} 7\n\
         hubroute_endpoint_replayed_rows_total{{endpoint=\"alerts-hook\"}} 4\n\
         hubroute_partition_events_total{{partition=\"0\"}} {}\n\
         hubroute_partition_events_total{{partition=\"1\"}} {}\n\
         hubroute_partition_events_total{{partition=\"2\"}} {}\n\
         hubroute_partition_events_total{{partition=\"3\"}} {}\n\
         hubroute_partition_lag_events{{partition=\"0\"}} 120\n\
         hubroute_partition_lag_seconds{{partition=\"0\"}} 1.5\n\
         hubroute_partition_checkpoint_sequence_number{{partition=\"0\"}} 2000\n\
         hubroute_partition_uncommitted_batches{{partition=\"0\"}} 1\n\
         hubroute_config_reloads_total{{outcome=\"applied\"}} 1\n",
        n(9000),
        n(9000),
        n(1900),
        n(130),
        n(10),
        n(8900),
        n(1890),
        n(127),
        n(100),
        n(100),
        n(2250),
        n(2250),
        n(2250),
        n(2250),
    )
}

fn status() -> Status {
    let before = Scrape::parse(&metrics(1)).unwrap();
    let now = Scrape::parse(&metrics(2)).unwrap();
    let routes = RoutesInfo::parse(
        r#"{"hub_name":"quickstart-hub","event_hub":"hub","partitions":["0","1","2","3"],
            "routes":[{"name":"archive","endpoint":"lake","enabled":true},
                      {"name":"hot-temperature","endpoint":"alerts-db","enabled":true},
                      {"name":"high-severity","endpoint":"alerts-hook","enabled":true}],
            "endpoints":[{"name":"lake","type":"parquet"},{"name":"alerts-db","type":"sqlite"},
                         {"name":"alerts-hook","type":"webhook"}]}"#,
    )
    .unwrap();
    Status::compute(&now, Some((1.0, &before)), Some(&before), Some(&routes))
}

fn screen() -> Screen {
    let mut screen = Screen::new("http://127.0.0.1:9464");
    screen.status = Some(status());
    screen.connection = Connection::Connected;
    screen
}

fn draw(screen: &Screen, width: u16, height: u16) -> Buffer {
    let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
    terminal
        .draw(|frame| frame.render_widget(screen, frame.area()))
        .unwrap();
    terminal.backend().buffer().clone()
}

fn lines(buffer: &Buffer) -> Vec<String> {
    let width = usize::from(buffer.area.width);
    buffer
        .content()
        .chunks(width)
        .map(|row| row.iter().map(|c| c.symbol()).collect::<String>())
        .map(|line| line.trim_end().to_owned())
        .collect()
}

/// Every column header the screen can show, by table.
const ROUTE_HEADERS: &[&str] = &[
    "route",
    "endpoint",
    "matched/s",
    "undefined/s",
    "matched",
    "undefined",
];
const ENDPOINT_HEADERS: &[&str] = &[
    "endpoint",
    "type",
    "health",
    "delivered/s",
    "delivered",
    "failed",
    "dead-lettered",
    "parked",
    "queue",
    "p50",
    "p99",
    // An engine series the view does not read by name: a column of lowest priority.
    "replayed_rows",
];
const PARTITION_HEADERS: &[&str] = &[
    "partition",
    "events/s",
    "events",
    "lag",
    "lag time",
    "checkpoint",
    "in flight",
];

/// The headers shown on the line that starts with `first`, read as whole words from the known set
/// (`lag time` and `in flight` are two words).
fn headers_on(lines: &[String], first: &str, known: &[&str]) -> Vec<String> {
    let line = lines
        .iter()
        .find(|l| l.split("  ").next().map(str::trim) == Some(first))
        .unwrap_or_else(|| panic!("no header line for {first} in\n{}", lines.join("\n")));
    let shown: Vec<String> = line
        .split("  ")
        .map(str::trim)
        .filter(|w| !w.is_empty())
        .map(str::to_owned)
        .collect();
    for header in &shown {
        assert!(
            known.contains(&header.as_str()),
            "`{header}` is a cut or unknown header in `{line}`"
        );
    }
    shown
}

#[test]
fn every_width_shows_one_line_per_row_and_drops_whole_columns() {
    let screen = screen();
    let mut previous_counts: Option<(usize, usize, usize)> = None;
    let mut previous_rows: Option<usize> = None;
    for width in [24_u16, 32, 40, 60, 80, 100, 120, 160, 240] {
        let buffer = draw(&screen, width, 40);
        let lines = lines(&buffer);
        let text = lines.join("\n");
        // One line per route, endpoint and partition, whatever the width: nothing wraps.
        for prefix in ["arch", "hot-", "high", "lake", "alerts-d", "alerts-h"] {
            let count = lines.iter().filter(|l| l.starts_with(prefix)).count();
            assert_eq!(
                count, 1,
                "width {width}: `{prefix}` on {count} lines\n{text}"
            );
        }
        let rows = lines.iter().filter(|l| !l.is_empty()).count();
        if let Some(previous) = previous_rows {
            assert_eq!(
                rows, previous,
                "width {width}: the row count changed\n{text}"
            );
        }
        previous_rows = Some(rows);

        let routes = headers_on(&lines, "route", ROUTE_HEADERS);
        let endpoints = headers_on(&lines, "endpoint", ENDPOINT_HEADERS);
        let partitions = headers_on(&lines, "partition", PARTITION_HEADERS);
        // The name column and the first number an operator reads are always there.
        if width >= 32 {
            assert!(
                routes.contains(&"matched/s".to_owned()),
                "width {width}\n{text}"
            );
            assert!(
                endpoints.contains(&"health".to_owned()),
                "width {width}\n{text}"
            );
            assert!(
                partitions.contains(&"lag".to_owned()),
                "width {width}\n{text}"
            );
        }
        let counts = (routes.len(), endpoints.len(), partitions.len());
        if let Some(before) = previous_counts {
            assert!(
                counts.0 >= before.0 && counts.1 >= before.1 && counts.2 >= before.2,
                "width {width}: fewer columns than narrower ({counts:?} < {before:?})"
            );
        }
        previous_counts = Some(counts);
        if width >= 160 {
            assert_eq!(routes.len(), ROUTE_HEADERS.len(), "{text}");
            assert_eq!(endpoints.len(), ENDPOINT_HEADERS.len(), "{text}");
            assert_eq!(partitions.len(), PARTITION_HEADERS.len(), "{text}");
        }
        if width <= 60 {
            assert!(
                endpoints.len() < ENDPOINT_HEADERS.len(),
                "width {width}\n{text}"
            );
        }
    }
}

#[test]
fn the_numbers_shown_are_the_metrics() {
    let lines = lines(&draw(&screen(), 200, 40));
    let text = lines.join("\n");
    let row = |prefix: &str| -> Vec<String> {
        lines
            .iter()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no `{prefix}` row in\n{text}"))
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    };
    // route, endpoint, matched/s, undefined/s, matched, undefined
    assert_eq!(
        row("archive"),
        ["archive", "lake", "9000", "0", "18000", "0"]
    );
    // endpoint, type, health, delivered/s, delivered, failed, dead-lettered, parked, queue, p50,
    // p99, replayed_rows
    assert_eq!(
        row("alerts-hook"),
        [
            "alerts-hook",
            "webhook",
            "dead",
            "127",
            "254",
            "3",
            "3",
            "7",
            "–",
            "–",
            "–",
            "4"
        ]
    );
    assert_eq!(
        row("lake")[7..11],
        [
            "0".to_owned(),
            "2".to_owned(),
            "250ms".to_owned(),
            "495ms".to_owned()
        ]
    );
    // partition, events/s, events, lag, lag time, checkpoint, in flight
    assert_eq!(row("0 "), ["0", "2250", "4500", "120", "1.5s", "2000", "1"]);
    assert!(text.contains("routed 18000 (9000/s)"), "{text}");
    assert!(text.contains("hub quickstart-hub"), "{text}");
    // The dead endpoint sorts first.
    let hook = lines
        .iter()
        .position(|l| l.starts_with("alerts-hook"))
        .unwrap();
    let lake = lines.iter().position(|l| l.starts_with("lake")).unwrap();
    assert!(hook < lake, "{text}");
}

#[test]
fn health_has_colour_and_a_disconnected_service_is_shown_dimmed_with_the_reason() {
    let mut screen = screen();
    let buffer = draw(&screen, 120, 40);
    let lines_now = lines(&buffer);
    let cell_of = |buffer: &Buffer, lines: &[String], row: &str, word: &str| {
        let y = lines.iter().position(|l| l.starts_with(row)).unwrap();
        let x = lines[y].find(word).unwrap();
        let x = lines[y][..x].chars().count();
        buffer[(u16::try_from(x).unwrap(), u16::try_from(y).unwrap())].clone()
    };
    assert_eq!(
        cell_of(&buffer, &lines_now, "lake", "healthy").fg,
        Color::Green
    );
    assert_eq!(
        cell_of(&buffer, &lines_now, "alerts-hook", "dead").bg,
        Color::Red
    );
    // Parked rows are a warning (they are replayed, not lost); none is no colour.
    let parked = |row: &str| {
        let header = lines_now
            .iter()
            .position(|l| l.starts_with("endpoint "))
            .unwrap();
        // Numbers are right-aligned: the last character sits under the header's.
        let x = lines_now[header].find("parked").unwrap() + "parked".len() - 1;
        let y = lines_now.iter().position(|l| l.starts_with(row)).unwrap();
        buffer[(u16::try_from(x).unwrap(), u16::try_from(y).unwrap())].clone()
    };
    let hook = parked("alerts-hook");
    assert_eq!((hook.symbol(), hook.fg), ("7", Color::Yellow));
    let lake = parked("lake");
    assert_eq!((lake.symbol(), lake.fg), ("0", Color::Reset));
    assert!(lines_now[0].ends_with("● connected"), "{}", lines_now[0]);

    screen.connection = Connection::Disconnected {
        problem: "http://127.0.0.1:9464/metrics: connection refused".to_owned(),
        for_seconds: 12.0,
    };
    let buffer = draw(&screen, 120, 40);
    let lines_now = lines(&buffer);
    let text = lines_now.join("\n");
    assert!(lines_now[0].ends_with("disconnected, retrying"), "{text}");
    assert!(
        lines_now[1].starts_with(
            "disconnected, retrying for 12.0s: http://127.0.0.1:9464/metrics: connection refused"
        ),
        "{text}"
    );
    // The last data stays, dimmed.
    let cell = cell_of(&buffer, &lines_now, "archive", "archive");
    assert!(cell.modifier.contains(Modifier::DIM), "{cell:?}");
    assert!(text.contains("18000"), "{text}");
    // Even at 20 columns the state is what shows.
    let narrow = lines(&draw(&screen, 20, 10));
    assert!(narrow[0].starts_with("disconnected, retry"), "{narrow:?}");

    // Before the first answer nothing pretends to be data.
    let mut fresh = Screen::new("http://127.0.0.1:1");
    fresh.connection = Connection::Disconnected {
        problem: "connection refused".to_owned(),
        for_seconds: 0.0,
    };
    let text = lines(&draw(&fresh, 80, 10)).join("\n");
    assert!(
        text.contains("disconnected, retrying for 0µs: connection refused"),
        "{text}"
    );
    assert!(text.contains("waiting for the first scrape"), "{text}");
}

#[test]
fn a_short_terminal_shows_every_table_with_what_fits_and_counts_the_rest() {
    let mut screen = screen();
    if let Some(status) = &mut screen.status {
        let template = status.routes[0].clone();
        for i in 0..40 {
            let mut route = template.clone();
            route.name = format!("route-{i:02}");
            status.routes.push(route);
        }
    }
    let lines = lines(&draw(&screen, 100, 20));
    let text = lines.join("\n");
    assert!(text.contains("ROUTES 43"), "{text}");
    assert!(text.contains("ENDPOINTS 3"), "{text}");
    assert!(text.contains("PARTITIONS 4"), "{text}");
    let more = lines
        .iter()
        .find(|l| l.starts_with("… "))
        .unwrap_or_else(|| panic!("no `… N more` in\n{text}"));
    let hidden: usize = more
        .trim_start_matches("… ")
        .trim_end_matches(" more")
        .parse()
        .unwrap();
    let shown = lines
        .iter()
        .filter(|l| {
            ["route-", "arch", "hot-", "high"]
                .iter()
                .any(|p| l.starts_with(p))
        })
        .count();
    assert_eq!(shown + hidden, 43, "{text}");
    assert!(lines.last().unwrap().starts_with("q quit"), "{text}");

    // The routes view gives routes the whole height.
    screen.section = Section::Routes;
    let text = lines_of(&screen, 100, 20);
    assert!(!text.contains("ENDPOINTS"), "{text}");
    assert_eq!(
        text.lines().filter(|l| l.starts_with("route-")).count(),
        13,
        "{text}"
    );
}

fn lines_of(screen: &Screen, width: u16, height: u16) -> String {
    lines(&draw(screen, width, height)).join("\n")
}

#[test]
fn other_series_and_sorting() {
    let mut screen = screen();
    screen.section = Section::Other;
    let text = lines_of(&screen, 100, 20);
    assert!(
        text.contains("hubroute_config_reloads_total{outcome=\"applied\"}"),
        "{text}"
    );
    screen.section = Section::Routes;
    let order = |text: &str| -> Vec<String> {
        text.lines()
            .skip(4)
            .filter_map(|l| l.split_whitespace().next())
            .filter(|w| !w.starts_with('q'))
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(
        order(&lines_of(&screen, 100, 20)),
        ["archive", "hot-temperature", "high-severity"]
    );
    screen.sort = SortOrder::Name;
    assert_eq!(
        order(&lines_of(&screen, 100, 20)),
        ["archive", "high-severity", "hot-temperature"]
    );
}

#[test]
fn keys_switch_views_and_sorting_and_quit() {
    let mut screen = screen();
    let cases = [
        (
            KeyCode::Char('r'),
            KeyModifiers::NONE,
            true,
            Section::Routes,
        ),
        (
            KeyCode::Char('e'),
            KeyModifiers::NONE,
            true,
            Section::Endpoints,
        ),
        (
            KeyCode::Char('p'),
            KeyModifiers::NONE,
            true,
            Section::Partitions,
        ),
        (KeyCode::Char('o'), KeyModifiers::NONE, true, Section::Other),
        (KeyCode::Char('x'), KeyModifiers::NONE, true, Section::Other),
        (KeyCode::Char('a'), KeyModifiers::NONE, true, Section::All),
        (KeyCode::Char('q'), KeyModifiers::NONE, false, Section::All),
        (KeyCode::Esc, KeyModifiers::NONE, false, Section::All),
        (
            KeyCode::Char('c'),
            KeyModifiers::CONTROL,
            false,
            Section::All,
        ),
    ];
    for (code, modifiers, keep_going, section) in cases {
        assert_eq!(
            apply_key(&mut screen, code, modifiers),
            keep_going,
            "{code:?}"
        );
        assert_eq!(screen.section, section, "{code:?}");
    }
    apply_key(&mut screen, KeyCode::Char('s'), KeyModifiers::NONE);
    assert_eq!(screen.sort, SortOrder::Name);
    apply_key(&mut screen, KeyCode::Char('s'), KeyModifiers::NONE);
    assert_eq!(screen.sort, SortOrder::Activity);
}

#[tokio::test]
async fn the_plain_line_says_disconnected_when_nothing_listens() {
    // A port that was just free: nothing listens there.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut poller = super::Poller::new(&format!("http://{addr}")).unwrap();
    assert_eq!(plain_line(&poller, &[]), "connecting…");
    poller.poll().await;
    let line = plain_line(&poller, &[]);
    assert!(
        line.starts_with(&format!("disconnected, retrying: http://{addr}/metrics: ")),
        "{line}"
    );
}
