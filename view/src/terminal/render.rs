//! Draws a [`Screen`] into a ratatui buffer: a title, the totals, then tables of routes,
//! endpoints, partitions and other series.
//!
//! Nothing ever wraps. Each column has a priority; when the terminal is too narrow, the columns of
//! least priority are dropped whole (a number is never cut), and only the name column is
//! shortened, with an ellipsis. When it is too short, each table keeps its title and header and
//! shows as many rows as fit, then "… N more". Unknown series (see [`crate::status`]) become
//! columns of lowest priority, so they appear when there is room and never push out the numbers
//! an operator looks for first.

use ratatui::buffer::Buffer;
use ratatui::layout::Rect;
use ratatui::style::{Color, Modifier, Style};
use ratatui::widgets::Widget;

use crate::format::{count, gauge, rate, seconds};
use crate::status::{EndpointRow, Extra, PartitionRow, RouteRow, Status};

/// Which tables are shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    /// Routes, endpoints and partitions together (and other series when there is room).
    All,
    /// Only routes, using the whole height.
    Routes,
    /// Only endpoints.
    Endpoints,
    /// Only partitions.
    Partitions,
    /// Only the series of no route, endpoint or partition.
    Other,
}

/// How rows are ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortOrder {
    /// Busiest first; endpoints in the worst health first; partitions with the most lag first.
    Activity,
    /// By name (partitions numerically).
    Name,
}

/// The state of the connection to the service.
#[derive(Debug, Clone, PartialEq)]
pub enum Connection {
    /// No answer yet.
    Connecting,
    /// The last scrape succeeded.
    Connected,
    /// The last scrape failed; the view shows the last data it had.
    Disconnected {
        /// Why.
        problem: String,
        /// For how long, in seconds.
        for_seconds: f64,
    },
}

/// Everything one frame shows.
#[derive(Debug, Clone)]
pub struct Screen {
    /// What is watched (a URL, or "quickstart").
    pub source: String,
    /// The newest view, if any.
    pub status: Option<Status>,
    /// The connection state.
    pub connection: Connection,
    /// Which tables are shown.
    pub section: Section,
    /// How rows are ordered.
    pub sort: SortOrder,
    /// Facts shown first on the totals line, e.g. `("sent", "1200")` in the quick start.
    pub facts: Vec<(String, String)>,
    /// Whether the last line lists the keys (`top`; not the quick start).
    pub keys: bool,
}

impl Screen {
    /// A screen of `source` before any data.
    pub fn new(source: impl Into<String>) -> Self {
        Self {
            source: source.into(),
            status: None,
            connection: Connection::Connecting,
            section: Section::All,
            sort: SortOrder::Activity,
            facts: Vec::new(),
            keys: true,
        }
    }

    /// The height the whole view would take with every row shown (for an inline viewport).
    pub fn natural_height(&self) -> u16 {
        let Some(status) = &self.status else {
            return 3;
        };
        let tables = [
            status.routes.len(),
            status.endpoints.len(),
            status.partitions.len(),
        ];
        let rows: usize = tables.iter().filter(|n| **n > 0).map(|n| n + 2).sum();
        u16::try_from(2 + rows + usize::from(self.keys)).unwrap_or(u16::MAX)
    }
}

const TITLE: Style = Style::new().add_modifier(Modifier::BOLD);
const SECTION: Style = Style::new().fg(Color::Cyan).add_modifier(Modifier::BOLD);
const HEADER: Style = Style::new()
    .add_modifier(Modifier::BOLD)
    .add_modifier(Modifier::UNDERLINED);
const MUTED: Style = Style::new().fg(Color::DarkGray);
const ALERT: Style = Style::new().fg(Color::Red).add_modifier(Modifier::BOLD);
const WARNING: Style = Style::new().fg(Color::Yellow);

/// The colour of a health status.
pub fn health_style(health: Option<&str>) -> Style {
    match health {
        Some("healthy") => Style::new().fg(Color::Green),
        Some("degraded") => Style::new().fg(Color::Yellow),
        Some("unhealthy") => Style::new().fg(Color::Red),
        Some("dead") => Style::new()
            .fg(Color::White)
            .bg(Color::Red)
            .add_modifier(Modifier::BOLD),
        Some("unknown") | None => MUTED,
        // A state this version does not know (a newer engine's): visible, not alarming.
        Some(_) => Style::new().fg(Color::Magenta),
    }
}

/// How bad a health status is, for sorting (worst first).
fn severity(health: Option<&str>) -> u8 {
    match health {
        Some("dead") => 5,
        Some("unhealthy") => 4,
        Some("degraded") => 3,
        Some("healthy") => 0,
        Some("unknown") | None => 1,
        Some(_) => 2,
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Align {
    Left,
    Right,
}

struct Column {
    header: String,
    /// Lower is kept longer; 0 is the name column, never dropped.
    priority: u16,
    align: Align,
    cells: Vec<(String, Style)>,
}

impl Column {
    fn new(header: &str, priority: u16, align: Align) -> Self {
        Self {
            header: header.to_owned(),
            priority,
            align,
            cells: Vec::new(),
        }
    }

    fn width(&self) -> u16 {
        let widest = self
            .cells
            .iter()
            .map(|(text, _)| text.chars().count())
            .chain(std::iter::once(self.header.chars().count()))
            .max()
            .unwrap_or(0);
        u16::try_from(widest).unwrap_or(u16::MAX)
    }
}

struct Table {
    title: String,
    columns: Vec<Column>,
    rows: usize,
}

/// Narrowest the name column gets before other columns are dropped for it.
const NAME_MIN: u16 = 10;
/// Space between columns.
const GAP: u16 = 2;

impl Table {
    /// The columns that fit in `width`, with their widths, in display order.
    fn fit(&self, width: u16) -> Vec<(usize, u16)> {
        let mut order: Vec<usize> = (0..self.columns.len()).collect();
        order.sort_by_key(|&i| self.columns[i].priority);
        let name_natural = self.columns[0].width();
        let name_width = name_natural.min(NAME_MIN.max(width / 3)).min(width);
        let mut used = name_width;
        let mut kept = vec![0];
        for &i in order.iter().filter(|&&i| i != 0) {
            let needed = GAP + self.columns[i].width();
            // Strictly by priority: a column is never shown while a more important one is not.
            if used + needed > width {
                break;
            }
            used += needed;
            kept.push(i);
        }
        kept.sort_unstable();
        // Whatever is left goes to the name, up to what it needs.
        let name = (name_width + width.saturating_sub(used)).min(name_natural);
        kept.into_iter()
            .map(|i| {
                if i == 0 {
                    (0, name)
                } else {
                    (i, self.columns[i].width())
                }
            })
            .collect()
    }

    /// Draws the title, the header and up to `area.height - 2` rows.
    fn render(&self, area: Rect, buf: &mut Buffer, dim: bool) {
        if area.height == 0 || area.width == 0 {
            return;
        }
        buf.set_stringn(area.x, area.y, &self.title, area.width.into(), SECTION);
        if area.height == 1 {
            return;
        }
        let columns = self.fit(area.width);
        let room = usize::from(area.height - 2);
        let (shown, more) = if self.rows > room {
            (room.saturating_sub(1), self.rows - room.saturating_sub(1))
        } else {
            (self.rows, 0)
        };
        let mut lines: Vec<Vec<(String, Style)>> = Vec::new();
        lines.push(
            self.columns
                .iter()
                .map(|c| (c.header.clone(), HEADER))
                .collect(),
        );
        for row in 0..shown {
            lines.push(self.columns.iter().map(|c| c.cells[row].clone()).collect());
        }
        for (offset, line) in lines.iter().enumerate() {
            let y = area.y + 1 + u16::try_from(offset).unwrap_or(u16::MAX);
            let mut x = area.x;
            for &(index, width) in &columns {
                let (text, style) = &line[index];
                let style = if dim {
                    style.add_modifier(Modifier::DIM)
                } else {
                    *style
                };
                let text = fit_text(text, width, self.columns[index].align);
                buf.set_stringn(x, y, text, width.into(), style);
                x += width + GAP;
            }
        }
        if more > 0 {
            let y = area.y + 1 + u16::try_from(shown + 1).unwrap_or(u16::MAX);
            buf.set_stringn(
                area.x,
                y,
                format!("… {more} more"),
                area.width.into(),
                MUTED,
            );
        }
    }
}

/// `text` padded to `width`, or cut with an ellipsis.
fn fit_text(text: &str, width: u16, align: Align) -> String {
    let width = usize::from(width);
    let length = text.chars().count();
    if length > width {
        if width == 0 {
            return String::new();
        }
        let mut cut: String = text.chars().take(width - 1).collect();
        cut.push('…');
        return cut;
    }
    match align {
        Align::Left => format!("{text:<width$}"),
        Align::Right => format!("{text:>width$}"),
    }
}

/// Adds one column per unknown series name found over `rows`.
fn extra_columns(columns: &mut Vec<Column>, rows: &[&[Extra]]) {
    let mut names: Vec<&str> = Vec::new();
    for extras in rows {
        for extra in *extras {
            if !names.contains(&extra.name.as_str()) {
                names.push(&extra.name);
            }
        }
    }
    for (offset, name) in names.iter().enumerate() {
        let mut column = Column::new(name, 100 + u16::try_from(offset).unwrap_or(0), Align::Right);
        for extras in rows {
            let value = extras.iter().find(|e| e.name == *name);
            column.cells.push((
                value.map_or_else(|| "–".to_owned(), |e| count(e.value)),
                Style::new(),
            ));
        }
        columns.push(column);
    }
}

fn by_activity<T>(rows: &mut [&T], key: impl Fn(&T) -> (u8, f64), name: impl Fn(&T) -> &str) {
    rows.sort_by(|a, b| {
        let (ka, kb) = (key(a), key(b));
        kb.0.cmp(&ka.0)
            .then(kb.1.total_cmp(&ka.1))
            .then_with(|| name(a).cmp(name(b)))
    });
}

fn route_table(status: &Status, sort: SortOrder) -> Table {
    let mut rows: Vec<&RouteRow> = status.routes.iter().collect();
    match sort {
        SortOrder::Activity => by_activity(
            &mut rows,
            |r| (0, r.matched.per_second.unwrap_or(0.0)),
            |r| &r.name,
        ),
        SortOrder::Name => rows.sort_by(|a, b| a.name.cmp(&b.name)),
    }
    let mut name = Column::new("route", 0, Align::Left);
    let mut endpoint = Column::new("endpoint", 6, Align::Left);
    let mut matched_rate = Column::new("matched/s", 1, Align::Right);
    let mut undefined_rate = Column::new("undefined/s", 2, Align::Right);
    let mut matched = Column::new("matched", 3, Align::Right);
    let mut undefined = Column::new("undefined", 4, Align::Right);
    for row in &rows {
        let style = if row.enabled == Some(false) {
            MUTED
        } else {
            Style::new()
        };
        let label = if row.enabled == Some(false) {
            format!("{} (disabled)", row.name)
        } else {
            row.name.clone()
        };
        name.cells.push((label, style));
        endpoint
            .cells
            .push((row.endpoint.clone().unwrap_or_default(), MUTED));
        matched_rate
            .cells
            .push((rate(row.matched.per_second), Style::new()));
        undefined_rate
            .cells
            .push((rate(row.undefined.per_second), Style::new()));
        matched.cells.push((count(row.matched.total), Style::new()));
        undefined
            .cells
            .push((count(row.undefined.total), Style::new()));
    }
    let mut columns = vec![
        name,
        endpoint,
        matched_rate,
        undefined_rate,
        matched,
        undefined,
    ];
    let extras: Vec<&[Extra]> = rows.iter().map(|r| r.extra.as_slice()).collect();
    extra_columns(&mut columns, &extras);
    Table {
        title: format!("ROUTES {}", rows.len()),
        columns,
        rows: rows.len(),
    }
}

fn endpoint_table(status: &Status, sort: SortOrder) -> Table {
    let mut rows: Vec<&EndpointRow> = status.endpoints.iter().collect();
    match sort {
        SortOrder::Activity => by_activity(
            &mut rows,
            |e| {
                (
                    severity(e.health.as_deref()),
                    e.delivered.per_second.unwrap_or(0.0),
                )
            },
            |e| &e.name,
        ),
        SortOrder::Name => rows.sort_by(|a, b| a.name.cmp(&b.name)),
    }
    let mut name = Column::new("endpoint", 0, Align::Left);
    let mut kind = Column::new("type", 10, Align::Left);
    let mut health = Column::new("health", 1, Align::Left);
    let mut delivered_rate = Column::new("delivered/s", 2, Align::Right);
    let mut delivered = Column::new("delivered", 9, Align::Right);
    let mut failed = Column::new("failed", 5, Align::Right);
    let mut dead = Column::new("dead-lettered", 6, Align::Right);
    let mut parked = Column::new("parked", 7, Align::Right);
    let mut queue = Column::new("queue", 4, Align::Right);
    let mut p50 = Column::new("p50", 8, Align::Right);
    let mut p99 = Column::new("p99", 3, Align::Right);
    for row in &rows {
        name.cells.push((row.name.clone(), Style::new()));
        kind.cells
            .push((row.kind.clone().unwrap_or_default(), MUTED));
        health.cells.push((
            row.health.clone().unwrap_or_else(|| "unknown".to_owned()),
            health_style(row.health.as_deref()),
        ));
        delivered_rate
            .cells
            .push((rate(row.delivered.per_second), Style::new()));
        delivered
            .cells
            .push((count(row.delivered.total), Style::new()));
        let alarming = |n: f64| if n > 0.0 { ALERT } else { Style::new() };
        failed
            .cells
            .push((count(row.failed.total), alarming(row.failed.total)));
        dead.cells.push((
            count(row.dead_lettered.total),
            alarming(row.dead_lettered.total),
        ));
        // Parked rows are kept for replay, not lost: a warning, not an alarm.
        parked.cells.push((
            count(row.parked.total),
            if row.parked.total > 0.0 {
                WARNING
            } else {
                Style::new()
            },
        ));
        queue.cells.push((gauge(row.queue_depth), Style::new()));
        p50.cells.push((seconds(row.p50_seconds), Style::new()));
        p99.cells.push((seconds(row.p99_seconds), Style::new()));
    }
    let mut columns = vec![
        name,
        kind,
        health,
        delivered_rate,
        delivered,
        failed,
        dead,
        parked,
        queue,
        p50,
        p99,
    ];
    let extras: Vec<&[Extra]> = rows.iter().map(|r| r.extra.as_slice()).collect();
    extra_columns(&mut columns, &extras);
    Table {
        title: format!("ENDPOINTS {}", rows.len()),
        columns,
        rows: rows.len(),
    }
}

fn partition_number(id: &str) -> (u64, &str) {
    (id.parse().unwrap_or(u64::MAX), id)
}

fn partition_table(status: &Status, sort: SortOrder) -> Table {
    let mut rows: Vec<&PartitionRow> = status.partitions.iter().collect();
    match sort {
        SortOrder::Activity => {
            rows.sort_by(|a, b| {
                b.lag_events
                    .unwrap_or(0.0)
                    .total_cmp(&a.lag_events.unwrap_or(0.0))
                    .then_with(|| partition_number(&a.id).cmp(&partition_number(&b.id)))
            });
        }
        SortOrder::Name => {
            rows.sort_by(|a, b| partition_number(&a.id).cmp(&partition_number(&b.id)));
        }
    }
    let mut name = Column::new("partition", 0, Align::Left);
    let mut events_rate = Column::new("events/s", 2, Align::Right);
    let mut events = Column::new("events", 5, Align::Right);
    let mut lag = Column::new("lag", 1, Align::Right);
    let mut lag_seconds = Column::new("lag time", 3, Align::Right);
    let mut checkpoint = Column::new("checkpoint", 4, Align::Right);
    let mut uncommitted = Column::new("in flight", 6, Align::Right);
    for row in &rows {
        name.cells.push((row.id.clone(), Style::new()));
        events_rate
            .cells
            .push((rate(row.events.per_second), Style::new()));
        events.cells.push((count(row.events.total), Style::new()));
        lag.cells.push((gauge(row.lag_events), Style::new()));
        lag_seconds
            .cells
            .push((seconds(row.lag_seconds), Style::new()));
        checkpoint.cells.push((gauge(row.checkpoint), Style::new()));
        uncommitted
            .cells
            .push((gauge(row.uncommitted_batches), Style::new()));
    }
    let mut columns = vec![
        name,
        events_rate,
        events,
        lag,
        lag_seconds,
        checkpoint,
        uncommitted,
    ];
    let extras: Vec<&[Extra]> = rows.iter().map(|r| r.extra.as_slice()).collect();
    extra_columns(&mut columns, &extras);
    Table {
        title: format!("PARTITIONS {}", rows.len()),
        columns,
        rows: rows.len(),
    }
}

fn other_table(status: &Status) -> Table {
    let mut name = Column::new("series", 0, Align::Left);
    let mut value = Column::new("value", 1, Align::Right);
    let mut per_second = Column::new("/s", 2, Align::Right);
    for series in &status.other {
        name.cells.push((series.series.clone(), MUTED));
        value.cells.push((count(series.value), Style::new()));
        per_second.cells.push((
            series
                .per_second
                .map_or_else(String::new, |r| rate(Some(r))),
            Style::new(),
        ));
    }
    Table {
        title: format!("OTHER SERIES {}", status.other.len()),
        columns: vec![name, value, per_second],
        rows: status.other.len(),
    }
}

/// Heights for tables that need `needs` lines each, sharing `height`: every table gets its title,
/// header and one row first, then rows are handed out one at a time.
fn share(needs: &[u16], height: u16) -> Vec<u16> {
    let mut given: Vec<u16> = needs.iter().map(|n| (*n).min(3)).collect();
    let mut left = height.saturating_sub(given.iter().sum());
    while left > 0 {
        let mut gave = false;
        for (g, n) in given.iter_mut().zip(needs) {
            if left > 0 && *g < *n {
                *g += 1;
                left -= 1;
                gave = true;
            }
        }
        if !gave {
            break;
        }
    }
    given
}

impl Widget for &Screen {
    fn render(self, area: Rect, buf: &mut Buffer) {
        if area.width == 0 || area.height == 0 {
            return;
        }
        let width = usize::from(area.width);
        let mut y = area.y;
        let bottom = area.y + area.height;

        // Title, with the connection state at the right.
        let (state, state_style) = match &self.connection {
            Connection::Connecting => ("connecting…".to_owned(), MUTED),
            Connection::Connected => ("● connected".to_owned(), Style::new().fg(Color::Green)),
            Connection::Disconnected { .. } => ("disconnected, retrying".to_owned(), ALERT),
        };
        let mut title = format!("hubroute · {}", self.source);
        if let Some(status) = &self.status {
            if let Some(hub) = &status.hub_name {
                title.push_str(&format!(" · hub {hub}"));
            }
            if let Some(event_hub) = &status.event_hub {
                title.push_str(&format!(" · event hub {event_hub}"));
            }
        }
        let state_width = state.chars().count();
        if state_width < width {
            buf.set_stringn(area.x, y, &title, width - state_width - 1, TITLE);
            let x = area.x + u16::try_from(width - state_width).unwrap_or(0);
            buf.set_stringn(x, y, &state, state_width, state_style);
        } else {
            buf.set_stringn(area.x, y, &state, width, state_style);
        }
        y += 1;

        if let Connection::Disconnected {
            problem,
            for_seconds,
        } = &self.connection
            && y < bottom
        {
            let line = format!(
                "disconnected, retrying for {}: {problem}",
                seconds(Some(*for_seconds))
            );
            buf.set_stringn(area.x, y, line, width, ALERT);
            y += 1;
        }

        let keys_line = self.keys && bottom - y > 2;
        let body_bottom = if keys_line { bottom - 1 } else { bottom };
        if let Some(status) = &self.status {
            if y < body_bottom {
                let mut facts: Vec<String> =
                    self.facts.iter().map(|(k, v)| format!("{k} {v}")).collect();
                facts.push(format!(
                    "routed {} ({}/s)",
                    count(status.events_routed.total),
                    rate(status.events_routed.per_second)
                ));
                if let Some(lag) = status.total_lag_events() {
                    facts.push(format!("lag {} events", count(lag)));
                }
                facts.push(format!("fallback {}", count(status.fallback_matched.total)));
                if let Some(reconnects) = status.reconnects {
                    facts.push(format!("reconnects {}", count(reconnects)));
                }
                // Facts are dropped whole from the right rather than cut.
                let mut line = String::new();
                for fact in facts {
                    let extra = if line.is_empty() { 0 } else { 3 } + fact.chars().count();
                    if line.chars().count() + extra > width {
                        break;
                    }
                    if !line.is_empty() {
                        line.push_str(" · ");
                    }
                    line.push_str(&fact);
                }
                buf.set_stringn(area.x, y, line, width, Style::new());
                y += 1;
            }
            let dim = matches!(self.connection, Connection::Disconnected { .. });
            let tables: Vec<Table> = match self.section {
                Section::All => {
                    let mut tables = vec![
                        route_table(status, self.sort),
                        endpoint_table(status, self.sort),
                        partition_table(status, self.sort),
                    ];
                    tables.retain(|t| t.rows > 0);
                    let used: u16 = tables
                        .iter()
                        .map(|t| u16::try_from(t.rows + 2).unwrap_or(u16::MAX))
                        .sum();
                    if !status.other.is_empty() && used + 3 <= body_bottom.saturating_sub(y) {
                        tables.push(other_table(status));
                    }
                    tables
                }
                Section::Routes => vec![route_table(status, self.sort)],
                Section::Endpoints => vec![endpoint_table(status, self.sort)],
                Section::Partitions => vec![partition_table(status, self.sort)],
                Section::Other => vec![other_table(status)],
            };
            let needs: Vec<u16> = tables
                .iter()
                .map(|t| u16::try_from(t.rows + 2).unwrap_or(u16::MAX))
                .collect();
            let heights = share(&needs, body_bottom.saturating_sub(y));
            for (table, height) in tables.iter().zip(heights) {
                let height = height.min(body_bottom.saturating_sub(y));
                table.render(Rect::new(area.x, y, area.width, height), buf, dim);
                y += height;
            }
        } else if y < body_bottom {
            buf.set_stringn(area.x, y, "waiting for the first scrape…", width, MUTED);
        }

        if keys_line {
            let sort = match self.sort {
                SortOrder::Activity => "activity",
                SortOrder::Name => "name",
            };
            let keys = format!(
                "q quit · a all · r routes · e endpoints · p partitions · o other · s sort ({sort})"
            );
            buf.set_stringn(area.x, bottom - 1, keys, width, MUTED);
        }
    }
}
