//! Confluence page bodies in Atlassian Document Format (ADF) rendered as Markdown.
//!
//! The mount shows every page as a `.md` file whose size must be known when its folder is
//! listed, so the rendering is a pure function of the ADF document and the attachment
//! links: no clock, no network, no hash-map iteration order. Malformed input never
//! panics; an unknown or malformed node renders the text it contains (or nothing).
//!
//! The output is CommonMark with the GitHub extensions (pipe tables, `~~strike~~`, task
//! lists). What each node becomes:
//!
//! | ADF | Markdown |
//! | --- | --- |
//! | `paragraph`, `heading` (level 1–6) | paragraph, `#`…`######` |
//! | `bulletList`, `orderedList` (`attrs.order` = first number), `listItem` | `- `, `N. `; nested content indented under its marker |
//! | `taskList`, `taskItem` (`TODO`/`DONE`) | `- [ ] `, `- [x] ` |
//! | `decisionList`, `decisionItem` | `- ✓ ` (every stored decision is a decided one) |
//! | `blockquote` | `> ` before every line (nests) |
//! | `codeBlock` (`attrs.language`) | backtick fence one longer than any backtick run inside, at least three |
//! | `rule` | `---` |
//! | `table`, `tableRow`, `tableHeader`, `tableCell` | pipe table; the first row is the header when it has header cells, else the header row is empty; a cell spanning columns is followed by empty cells |
//! | `panel` (`attrs.panelType`) | block quote opening with a bold label, e.g. `> **Warning:**` |
//! | `expand`, `nestedExpand` | `attrs.title` as a bold line, then the content |
//! | `mediaSingle`, `mediaGroup`, `media` | `![alt](link)`, each on its own line; see below |
//! | `caption` | italic paragraph under the media |
//! | `blockCard`, `embedCard` | `<url>` on its own line |
//! | `layoutSection`, `layoutColumn`, `bodiedExtension`, `doc` | their content, one block after another |
//! | `extension`, `inlineExtension` | `\[extension: KEY\]` (shows `[extension: KEY]`) |
//! | `hardBreak` | backslash line break (`\` at the end of the line) |
//! | `mention` | `attrs.text` (`@Name`), else `@` + `attrs.id` |
//! | `emoji` | `attrs.text` (the character), else `attrs.shortName` |
//! | `date` (`attrs.timestamp`, ms since the epoch) | `YYYY-MM-DD` in UTC |
//! | `status` | `\[TEXT\]` (shows `[TEXT]`), upper-cased as Confluence shows the lozenge |
//! | `inlineCard` | `<url>` |
//! | `placeholder` | nothing (it is editor hint text, not content) |
//!
//! Marks: `strong` `**`, `em` `_`, `strike` `~~`, `code` a backtick span, `link`
//! `[text](href)` (relative hrefs joined to the wiki base URL), `underline` `<u>`, `subsup`
//! `<sub>`/`<sup>`. Colour, alignment, indentation, border, annotation, fragment and
//! breakout marks only style the text, which is kept. Runs of text sharing a mark are put
//! under one pair of delimiters, the mark covering the longest run outermost, so
//! `**bold _both_**` comes out instead of `**bold** **_both_**`. Whitespace at the edges
//! of a marked run is moved outside the delimiters (`**bold **` is not bold in
//! CommonMark), and where CommonMark's flanking rules would still leave `**`, `_` or
//! `~~` unrecognised (e.g. emphasis inside a word) the HTML tag (`<strong>`, `<em>`,
//! `<del>`) is written instead, so the formatting never turns into stray asterisks.
//!
//! Text is escaped so that it shows literally, with a backslash before:
//! - `\\`, `` ` ``, `*`, `_`, `[`, `]`, `<`, `~` anywhere, and `&` where it would start an
//!   entity (`&amp;`), and `!` right before a link (it would make an image);
//! - `#`, `>`, `-`/`+` (list marker, rule, setext underline), `=`, `1.`/`1)` and a table
//!   delimiter row (`--- | ---`) where a line starts with them;
//! - `|` inside table cells, which also turn line breaks into `<br>`.
//!
//! Code spans and code blocks are not escaped. Spaces at the start and end of a line, and
//! around a line break, are dropped (four of them would make an indented code block).
//!
//! Media of type `file` link to the attachment named by `attrs.id` in
//! [`RenderContext::attachments`]; the alt text is `attrs.alt`, else the link's file
//! name. An id with no attachment renders as
//! `![alt](attachment:ID "attachment not found")`: still an image in the Markdown, but the
//! pseudo-scheme and the title say in the source what is missing. `external` media use
//! `attrs.url`; `link` media and `mediaInline` (an inline file chip in Confluence) render
//! as links rather than images.
//!
//! Blocks are separated by one blank line, except that a nested list follows its item's
//! paragraph directly (to keep the list tight); two lists of the same kind in a row get
//! an empty HTML comment between them so Markdown does not merge them. The output ends
//! with exactly one newline; an empty document renders as the empty string.
//!
//! Reference (ADF nodes and marks):
//! - <https://developer.atlassian.com/cloud/jira/platform/apis/document/structure/>
//! - <https://developer.atlassian.com/cloud/jira/platform/apis/document/nodes/media/>
//! - <https://developer.atlassian.com/cloud/jira/platform/apis/document/nodes/panel/>
//! - <https://developer.atlassian.com/cloud/jira/platform/apis/document/nodes/nestedExpand/>
//! - <https://developer.atlassian.com/cloud/jira/platform/apis/document/nodes/emoji/>
//! - <https://developer.atlassian.com/cloud/jira/platform/apis/document/nodes/inlineCard/>
//! - <https://developer.atlassian.com/cloud/jira/platform/apis/document/marks/subsup/>
//! - <https://developer.atlassian.com/platform/framework/adf-builder/reference/> (all nodes,
//!   including the Confluence-only ones: `mediaSingle`, `mediaInline`, `taskItem`,
//!   `decisionItem`, `status`, `expand`, `extension`, `bodiedExtension`, `embedCard`)
//!
//! Markdown: <https://spec.commonmark.org/0.31.2/> and <https://github.github.com/gfm/>.

use std::collections::{HashMap, HashSet, VecDeque};

use serde_json::Value;

/// What the renderer needs to know besides the document.
pub struct RenderContext<'a> {
    /// Attachment file ids (ADF `media` node `attrs.id`, Confluence's `fileId`) → the
    /// relative link to the attachment file as the mount shows it, already a valid
    /// Markdown link target (the caller percent-encodes / angle-brackets it).
    pub attachments: &'a HashMap<String, String>,
    /// The site's wiki base URL ("https://x.atlassian.net/wiki"), for relative links.
    pub base_url: &'a str,
}

/// The Markdown of an ADF document (the `doc` node). Never panics on malformed input:
/// unknown or malformed nodes render their text content (or nothing).
pub fn to_markdown(doc: &Value, ctx: &RenderContext<'_>) -> String {
    let renderer = Renderer { ctx };
    let blocks = renderer.block_seq(std::slice::from_ref(doc), Scope::TOP);
    let mut md = join_blocks(&blocks, false);
    md.truncate(md.trim_end_matches('\n').len());
    if !md.is_empty() {
        md.push('\n');
    }
    md
}

/// The `attrs.id` of every media node of type "file" in document order, deduplicated:
/// the caller looks up attachments only for pages that have some.
///
/// `mediaInline` nodes count too (their type defaults to "file"), because they are
/// rendered from the same attachment links.
pub fn media_file_ids(doc: &Value) -> Vec<String> {
    let mut ids = Vec::new();
    let mut seen = HashSet::new();
    collect_file_ids(doc, 0, &mut ids, &mut seen);
    ids
}

/// A link target for Markdown: `<…>` around it when it has spaces or parentheses,
/// with `<`, `>` and newlines percent-encoded. Used by the caller for attachment links.
///
/// Backslashes are percent-encoded too: inside `<…>` a trailing one would escape the
/// closing bracket, and outside it one before punctuation would be eaten as an escape.
/// Other control characters (tab) also call for the brackets.
pub fn link_target(path: &str) -> String {
    let mut encoded = String::with_capacity(path.len() + 2);
    let mut bracket = path.is_empty();
    for c in path.chars() {
        match c {
            '<' => encoded.push_str("%3C"),
            '>' => encoded.push_str("%3E"),
            '\n' => encoded.push_str("%0A"),
            '\r' => encoded.push_str("%0D"),
            '\\' => encoded.push_str("%5C"),
            ' ' | '(' | ')' => {
                bracket = true;
                encoded.push(c);
            }
            c => {
                bracket |= c.is_control();
                encoded.push(c);
            }
        }
    }
    if bracket {
        format!("<{encoded}>")
    } else {
        encoded
    }
}

/// Nodes nested deeper than this are dropped, so that a hostile document cannot exhaust
/// the stack (serde_json's parser already stops at 128 JSON levels, about 64 ADF levels).
const MAX_DEPTH: usize = 100;
/// Columns one table cell may claim through `colspan`.
const MAX_COLSPAN: u64 = 100;
/// CommonMark list numbers have at most nine digits.
const MAX_LIST_NUMBER: u64 = 999_999_999;

/// Types that render as blocks; anything else unknown that carries text is inline.
const BLOCK_TYPES: &[&str] = &[
    "doc",
    "paragraph",
    "heading",
    "bulletList",
    "orderedList",
    "listItem",
    "taskList",
    "taskItem",
    "decisionList",
    "decisionItem",
    "blockquote",
    "codeBlock",
    "rule",
    "table",
    "tableRow",
    "tableHeader",
    "tableCell",
    "panel",
    "expand",
    "nestedExpand",
    "mediaSingle",
    "mediaGroup",
    "media",
    "caption",
    "blockCard",
    "embedCard",
    "layoutSection",
    "layoutColumn",
    "extension",
    "bodiedExtension",
    "multiBodiedExtension",
    "extensionFrame",
];

const INLINE_TYPES: &[&str] = &[
    "text",
    "hardBreak",
    "mention",
    "emoji",
    "date",
    "status",
    "inlineCard",
    "placeholder",
    "mediaInline",
    "inlineExtension",
];

// ---------------------------------------------------------------------------------------
// Reading nodes: every accessor tolerates missing keys and wrong types.

fn node_type(node: &Value) -> &str {
    node.get("type").and_then(Value::as_str).unwrap_or("")
}

fn attr<'v>(node: &'v Value, key: &str) -> Option<&'v Value> {
    node.get("attrs")?.get(key)
}

fn attr_str<'v>(node: &'v Value, key: &str) -> Option<&'v str> {
    attr(node, key)?.as_str()
}

/// A non-empty, trimmed string attribute.
fn attr_text<'v>(node: &'v Value, key: &str) -> Option<&'v str> {
    attr_str(node, key).map(str::trim).filter(|s| !s.is_empty())
}

/// The child nodes; a lone object or string where an array belongs counts as one child.
fn children(node: &Value) -> &[Value] {
    match node.get("content") {
        Some(Value::Array(nodes)) => nodes,
        Some(child @ (Value::Object(_) | Value::String(_))) => std::slice::from_ref(child),
        _ => &[],
    }
}

fn text_field(node: &Value) -> Option<&str> {
    node.get("text").and_then(Value::as_str)
}

/// A non-negative integer attribute, also accepted as a float or a numeric string.
fn attr_u64(node: &Value, key: &str) -> Option<u64> {
    match attr(node, key)? {
        Value::Number(n) => n.as_u64().or_else(|| {
            n.as_f64()
                .filter(|f| f.is_finite() && *f >= 0.0)
                .map(|f| f as u64)
        }),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// Whether a node belongs in running text (so that consecutive ones form a paragraph).
fn is_inline(node: &Value) -> bool {
    match node {
        Value::String(_) => true,
        Value::Object(_) => {
            let kind = node_type(node);
            if INLINE_TYPES.contains(&kind) {
                return true;
            }
            if BLOCK_TYPES.contains(&kind) {
                return false;
            }
            // Unknown: inline when it carries text itself or only has inline children.
            let content = children(node);
            text_field(node).is_some()
                || (!content.is_empty()
                    && content.iter().all(|c| {
                        matches!(c, Value::String(_))
                            || INLINE_TYPES.contains(&node_type(c))
                            || (!BLOCK_TYPES.contains(&node_type(c)) && text_field(c).is_some())
                    }))
        }
        _ => false,
    }
}

fn collect_file_ids(node: &Value, depth: usize, ids: &mut Vec<String>, seen: &mut HashSet<String>) {
    if depth > MAX_DEPTH {
        return;
    }
    match node {
        Value::Array(nodes) => {
            for n in nodes {
                collect_file_ids(n, depth + 1, ids, seen);
            }
        }
        Value::Object(_) => {
            let is_file = match node_type(node) {
                "media" => attr_str(node, "type") == Some("file"),
                "mediaInline" => is_inline_file(node),
                _ => false,
            };
            if let Some(id) = attr_text(node, "id").filter(|_| is_file) {
                if seen.insert(id.to_owned()) {
                    ids.push(id.to_owned());
                }
            }
            for child in children(node) {
                collect_file_ids(child, depth + 1, ids, seen);
            }
        }
        _ => {}
    }
}

/// `mediaInline` types are "file" (the default), "image" or the defunct "link".
fn is_inline_file(node: &Value) -> bool {
    matches!(attr_str(node, "type"), None | Some("file") | Some("image"))
}

// ---------------------------------------------------------------------------------------
// Blocks

/// One rendered block, without a trailing newline.
struct Block {
    text: String,
    kind: Kind,
}

/// What `join_blocks` needs to know about a block to separate it from its neighbours.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Paragraph,
    /// `interrupts`: Markdown lets the list start right under a paragraph line (bullet
    /// lists, or ordered lists starting at 1, whose first item is not empty).
    List {
        ordered: bool,
        interrupts: bool,
    },
    Other,
}

impl Block {
    fn paragraph(text: String) -> Block {
        Block {
            text,
            kind: Kind::Paragraph,
        }
    }

    fn other(text: String) -> Block {
        Block {
            text,
            kind: Kind::Other,
        }
    }
}

fn push_block(out: &mut Vec<Block>, block: Option<Block>) {
    if let Some(block) = block.filter(|b| !b.text.is_empty()) {
        out.push(block);
    }
}

/// Blocks separated by a blank line. In a list item (`in_item`) a list directly after a
/// paragraph starts on the next line, which keeps the list tight. Two lists of the same
/// kind in a row would be merged into one by Markdown, so an empty comment parts them.
fn join_blocks(blocks: &[Block], in_item: bool) -> String {
    let mut text = String::new();
    for (i, block) in blocks.iter().enumerate() {
        if i > 0 {
            let separator = match (blocks[i - 1].kind, block.kind) {
                (Kind::List { ordered: a, .. }, Kind::List { ordered: b, .. }) if a == b => {
                    "\n\n<!-- -->\n\n"
                }
                (
                    Kind::Paragraph,
                    Kind::List {
                        interrupts: true, ..
                    },
                ) if in_item => "\n",
                _ => "\n\n",
            };
            text.push_str(separator);
        }
        text.push_str(&block.text);
    }
    text
}

/// Where a node is rendered: how deep (against `MAX_DEPTH`) and whether inside a table
/// cell, where only inline Markdown is possible.
#[derive(Clone, Copy)]
struct Scope {
    depth: usize,
    in_table: bool,
}

impl Scope {
    const TOP: Scope = Scope {
        depth: 0,
        in_table: false,
    };

    fn nested(self) -> Option<Scope> {
        (self.depth < MAX_DEPTH).then_some(Scope {
            depth: self.depth + 1,
            ..self
        })
    }

    fn table(self) -> Scope {
        Scope {
            in_table: true,
            ..self
        }
    }
}

struct Renderer<'r, 'a> {
    ctx: &'r RenderContext<'a>,
}

impl Renderer<'_, '_> {
    /// A sequence of sibling nodes as blocks; runs of inline nodes form one paragraph.
    fn block_seq(&self, nodes: &[Value], scope: Scope) -> Vec<Block> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < nodes.len() {
            if is_inline(&nodes[i]) {
                let run = nodes[i..].iter().take_while(|n| is_inline(n)).count();
                push_block(&mut out, self.paragraph(&nodes[i..i + run], &[], scope));
                i += run;
            } else {
                self.block(&nodes[i], scope, &mut out);
                i += 1;
            }
        }
        out
    }

    fn block(&self, node: &Value, scope: Scope, out: &mut Vec<Block>) {
        let Some(inner) = scope.nested() else {
            return;
        };
        if let Value::Array(nodes) = node {
            out.extend(self.block_seq(nodes, inner));
            return;
        }
        match node_type(node) {
            "paragraph" => push_block(out, self.paragraph(children(node), &[], inner)),
            "heading" => push_block(out, self.heading(node, inner)),
            "bulletList" | "orderedList" | "taskList" | "decisionList" => {
                push_block(out, self.list(node, inner));
            }
            "blockquote" => {
                let blocks = self.block_seq(children(node), inner);
                push_block(out, quote(&blocks, inner.in_table));
            }
            "codeBlock" => push_block(out, code_block(node, inner)),
            "rule" => out.push(Block::other("---".to_owned())),
            "table" => push_block(out, self.table(node, inner)),
            "panel" => push_block(out, self.panel(node, inner)),
            "expand" | "nestedExpand" => self.expand(node, inner, out),
            "mediaSingle" | "mediaGroup" => self.media_blocks(node, inner, out),
            "media" => push_block(
                out,
                self.media(node, false, None).map(|m| Block::paragraph(m.0)),
            ),
            "caption" => push_block(out, self.paragraph(children(node), &[Mark::Em], inner)),
            "blockCard" | "embedCard" => {
                push_block(out, self.card(node).map(Block::paragraph));
            }
            "extension" => out.push(Block::paragraph(extension_placeholder(node))),
            // doc, layoutSection/layoutColumn (columns one after another), bodiedExtension,
            // list items and table parts found out of place, unknown containers.
            _ => out.extend(self.block_seq(children(node), inner)),
        }
    }

    fn paragraph(&self, nodes: &[Value], extra: &[Mark], scope: Scope) -> Option<Block> {
        let mut items = Vec::new();
        self.inline_items(nodes, extra, scope, &mut items);
        let mode = if scope.in_table {
            Mode::Cell
        } else {
            Mode::Block
        };
        let text = render_inline(&items, mode);
        (!text.is_empty()).then(|| Block::paragraph(text))
    }

    fn heading(&self, node: &Value, scope: Scope) -> Option<Block> {
        if scope.in_table {
            // A cell holds inline content only: the heading becomes bold text.
            return self.paragraph(children(node), &[Mark::Strong], scope);
        }
        let level = attr_u64(node, "level").unwrap_or(1).clamp(1, 6) as usize;
        let mut items = Vec::new();
        self.inline_items(children(node), &[], scope, &mut items);
        let text = render_inline(&items, Mode::Heading);
        (!text.is_empty()).then(|| Block::other(format!("{} {text}", "#".repeat(level))))
    }

    fn list(&self, node: &Value, scope: Scope) -> Option<Block> {
        let list_type = node_type(node);
        let ordered = list_type == "orderedList";
        let mut items: Vec<ListItem> = Vec::new();
        for child in children(node) {
            let marker = match node_type(child) {
                "listItem" if ordered => Marker::Number,
                "listItem" => Marker::Bullet,
                "taskItem" => Marker::Task(attr_str(child, "state") == Some("DONE")),
                "decisionItem" => Marker::Decision,
                "bulletList" | "orderedList" | "taskList" | "decisionList" if !items.is_empty() => {
                    // A list directly inside a list (as nested task lists are stored)
                    // belongs to the item before it.
                    if let Some(last) = items.last_mut() {
                        self.block(child, scope, &mut last.blocks);
                    }
                    continue;
                }
                // Anything else out of place becomes an item of its own.
                _ => {
                    let blocks = self.block_seq(std::slice::from_ref(child), scope);
                    items.push(ListItem {
                        marker: default_marker(list_type),
                        blocks,
                    });
                    continue;
                }
            };
            let blocks = self.block_seq(children(child), scope);
            items.push(ListItem { marker, blocks });
        }
        if items.is_empty() {
            return None;
        }
        let max_start = MAX_LIST_NUMBER.saturating_sub(items.len() as u64 - 1);
        let start = attr_u64(node, "order").unwrap_or(1).min(max_start);
        let mut text = String::new();
        let mut first_empty = false;
        for (k, item) in items.iter().enumerate() {
            let marker = match item.marker {
                Marker::Bullet => "- ".to_owned(),
                Marker::Number => format!("{}. ", start + k as u64),
                Marker::Task(true) => "- [x] ".to_owned(),
                Marker::Task(false) => "- [ ] ".to_owned(),
                Marker::Decision => "- ✓ ".to_owned(),
            };
            // Continuation lines line up with the item's content, which for task and
            // decision items starts after "- " (the box or tick is part of the content).
            let indent = match item.marker {
                Marker::Number => marker.len(),
                _ => 2,
            };
            let body = join_blocks(&item.blocks, true);
            if k > 0 {
                text.push('\n');
            } else {
                first_empty = body.is_empty();
            }
            if body.is_empty() {
                text.push_str(marker.trim_end());
                continue;
            }
            for (l, line) in body.split('\n').enumerate() {
                if l == 0 {
                    text.push_str(&marker);
                } else {
                    text.push('\n');
                    if !line.is_empty() {
                        text.push_str(&" ".repeat(indent));
                    }
                }
                text.push_str(line);
            }
        }
        Some(Block {
            text,
            kind: Kind::List {
                ordered,
                interrupts: !first_empty && (!ordered || start == 1),
            },
        })
    }

    fn table(&self, node: &Value, scope: Scope) -> Option<Block> {
        let cell_scope = scope.table();
        let mut rows: Vec<Vec<String>> = Vec::new();
        let mut header_row = false;
        for (r, row) in children(node).iter().enumerate() {
            // A stray non-row node is kept as a one-cell row.
            let cells = if node_type(row) == "tableRow" {
                children(row)
            } else {
                std::slice::from_ref(row)
            };
            let mut texts = Vec::new();
            let mut has_header = false;
            for cell in cells {
                has_header |= node_type(cell) == "tableHeader";
                texts.push(self.cell_text(cell, cell_scope));
                // Merged cells cannot be expressed; empty cells keep the columns aligned.
                let span = attr_u64(cell, "colspan").unwrap_or(1).clamp(1, MAX_COLSPAN);
                texts.extend((1..span).map(|_| String::new()));
            }
            if r == 0 {
                header_row = has_header;
            }
            rows.push(texts);
        }
        let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
        if columns == 0 {
            return None;
        }
        let header = if header_row {
            rows.remove(0)
        } else {
            Vec::new()
        };
        let mut lines = vec![table_row(&header, columns), "| --- ".repeat(columns) + "|"];
        lines.extend(rows.iter().map(|row| table_row(row, columns)));
        Some(Block::other(lines.join("\n")))
    }

    /// A cell's content on one line: line breaks become `<br>`, pipes are escaped.
    fn cell_text(&self, cell: &Value, scope: Scope) -> String {
        let Some(inner) = scope.nested() else {
            return String::new();
        };
        let blocks = match node_type(cell) {
            "tableCell" | "tableHeader" => self.block_seq(children(cell), inner),
            _ => self.block_seq(std::slice::from_ref(cell), inner),
        };
        let text = join_blocks(&blocks, false);
        let lines: Vec<&str> = text
            .lines()
            .map(|l| l.trim_matches([' ', '\t']))
            .filter(|l| !l.is_empty())
            .collect();
        lines.join("<br>").replace('|', "\\|")
    }

    fn panel(&self, node: &Value, scope: Scope) -> Option<Block> {
        let label = match attr_str(node, "panelType") {
            None | Some("info") => "Info",
            Some("note") => "Note",
            Some("tip") => "Tip",
            Some("warning") => "Warning",
            Some("error") => "Error",
            Some("success") => "Success",
            // "custom" panels carry an arbitrary icon and colour.
            Some(_) => "Note",
        };
        let mut blocks = vec![Block::paragraph(format!("**{label}:**"))];
        blocks.extend(self.block_seq(children(node), scope));
        quote(&blocks, scope.in_table)
    }

    fn expand(&self, node: &Value, scope: Scope, out: &mut Vec<Block>) {
        if let Some(title) = attr_text(node, "title") {
            let mut items = Vec::new();
            push_text(&mut items, title, vec![Mark::Strong]);
            let mode = if scope.in_table {
                Mode::Cell
            } else {
                Mode::Block
            };
            push_block(out, Some(Block::paragraph(render_inline(&items, mode))));
        }
        out.extend(self.block_seq(children(node), scope));
    }

    /// `mediaSingle` (one media and an optional caption) or `mediaGroup` (several media):
    /// every media on a line of its own.
    fn media_blocks(&self, node: &Value, scope: Scope, out: &mut Vec<Block>) {
        let link = self.link_mark(node);
        for child in children(node) {
            match node_type(child) {
                "media" => push_block(
                    out,
                    self.media(child, false, link.as_deref())
                        .map(|m| Block::paragraph(m.0)),
                ),
                "caption" => {
                    push_block(out, self.paragraph(children(child), &[Mark::Em], scope));
                }
                _ => self.block(child, scope, out),
            }
        }
    }

    /// A media node as Markdown and as plain text (its alt text, used inside code spans).
    /// `as_link`: a link rather than an embedded image (inline file chips).
    fn media(
        &self,
        node: &Value,
        as_link: bool,
        outer_link: Option<&str>,
    ) -> Option<(String, String)> {
        let inline = node_type(node) == "mediaInline";
        let kind = attr_str(node, "type").unwrap_or(if inline { "file" } else { "" });
        let as_link = as_link || kind == "link";
        let alt_attr = attr_text(node, "alt").map(one_line);
        let url = attr_text(node, "url");
        let id = attr_text(node, "id");
        let bang = if as_link { "" } else { "!" };
        let (md, alt) = match (url, id) {
            (Some(url), _) if kind == "external" || kind == "link" => {
                let resolved = resolve_href(url, self.ctx.base_url);
                let mut alt = alt_attr.unwrap_or_else(|| file_name(&resolved, true));
                if as_link && alt.is_empty() {
                    alt = one_line(url);
                }
                let md = format!("{bang}[{}]({})", escape_text(&alt), link_target(&resolved));
                (md, alt)
            }
            (_, Some(id)) => match self.ctx.attachments.get(id) {
                Some(target) => {
                    let mut alt = alt_attr.unwrap_or_else(|| file_name(target, false));
                    if as_link && alt.is_empty() {
                        alt = "attachment".to_owned();
                    }
                    (format!("{bang}[{}]({target})", escape_text(&alt)), alt)
                }
                None => {
                    let alt = alt_attr.unwrap_or_else(|| "attachment".to_owned());
                    let target = link_target(&format!("attachment:{id}"));
                    let md = format!(
                        "{bang}[{}]({target} \"attachment not found\")",
                        escape_text(&alt)
                    );
                    (md, alt)
                }
            },
            _ => return None,
        };
        // A link mark on the media (or its mediaSingle) makes the image clickable; a link
        // cannot be put inside another one.
        let link = outer_link
            .map(str::to_owned)
            .or_else(|| self.link_mark(node));
        match link {
            Some(href) if !as_link => Some((format!("[{md}]({href})"), alt)),
            _ => Some((md, alt)),
        }
    }

    /// The Markdown link target of a node's `link` mark, if it has one.
    fn link_mark(&self, node: &Value) -> Option<String> {
        self.marks_of(node).into_iter().find_map(|m| match m {
            Mark::Link(target) => Some(target),
            _ => None,
        })
    }

    /// An inline or block card: its URL as an autolink.
    fn card(&self, node: &Value) -> Option<String> {
        let url = attr_text(node, "url").or_else(|| {
            attr(node, "data")?
                .get("url")?
                .as_str()
                .map(str::trim)
                .filter(|u| !u.is_empty())
        })?;
        Some(autolink(&resolve_href(url, self.ctx.base_url)))
    }

    // -----------------------------------------------------------------------------------
    // Inline content

    /// Flattens inline nodes into items; `extra` marks apply to all of them (a caption's
    /// italics, a heading's bold inside a table).
    fn inline_items(&self, nodes: &[Value], extra: &[Mark], scope: Scope, out: &mut Vec<Item>) {
        for node in nodes {
            if let Value::String(text) = node {
                push_text(out, text, extra.to_vec());
                continue;
            }
            let mut marks = canonical(extra.iter().cloned().chain(self.marks_of(node)).collect());
            if matches!(node_type(node), "media" | "mediaInline" | "inlineCard") {
                // These are links themselves (or apply their link mark to the image), and
                // a link cannot be put inside another one.
                marks.retain(|m| !matches!(m, Mark::Link(_)));
            }
            let atom = match node_type(node) {
                "text" => {
                    if let Some(text) = text_field(node) {
                        push_text(out, text, marks);
                    }
                    continue;
                }
                "hardBreak" => {
                    out.push(Item {
                        marks: Vec::new(),
                        body: Body::Break,
                    });
                    continue;
                }
                "placeholder" => continue,
                "mention" => attr_text(node, "text")
                    .map(one_line)
                    .or_else(|| attr_text(node, "id").map(|id| format!("@{}", one_line(id))))
                    .map(|t| (escape_text(&t), t)),
                "emoji" => attr_text(node, "text")
                    .or_else(|| attr_text(node, "shortName"))
                    .map(one_line)
                    .map(|t| (escape_text(&t), t)),
                "date" => attr(node, "timestamp")
                    .and_then(iso_date)
                    .map(|d| (escape_text(&d), d)),
                "status" => attr_text(node, "text").map(|t| {
                    let label = format!("[{}]", one_line(t).to_uppercase());
                    (escape_text(&label), label)
                }),
                "inlineCard" => self.card(node).map(|md| {
                    let plain = md.trim_start_matches('<').trim_end_matches('>').to_owned();
                    (md, plain)
                }),
                "mediaInline" => self.media(node, true, None),
                "media" => self.media(node, false, None),
                "inlineExtension" | "extension" => {
                    let md = extension_placeholder(node);
                    Some((md.clone(), md))
                }
                kind => {
                    // Unknown, or a block where only inline content belongs: keep its text.
                    if let Some(text) = text_field(node) {
                        push_text(out, text, marks.clone());
                    }
                    if let Some(inner) = scope.nested() {
                        self.inline_items(children(node), &marks, inner, out);
                    }
                    if BLOCK_TYPES.contains(&kind) {
                        out.push(Item {
                            marks: Vec::new(),
                            body: Body::Break,
                        });
                    }
                    continue;
                }
            };
            if let Some((md, plain)) = atom {
                out.push(Item {
                    marks,
                    body: Body::Atom { md, plain },
                });
            }
        }
    }

    /// The marks of a node that change the Markdown; the purely visual ones are dropped.
    fn marks_of(&self, node: &Value) -> Vec<Mark> {
        let Some(Value::Array(marks)) = node.get("marks") else {
            return Vec::new();
        };
        marks
            .iter()
            .filter_map(|mark| match node_type(mark) {
                "strong" => Some(Mark::Strong),
                "em" => Some(Mark::Em),
                "strike" => Some(Mark::Strike),
                "underline" => Some(Mark::Underline),
                "code" => Some(Mark::Code),
                "subsup" => match attr_str(mark, "type") {
                    Some("sub") => Some(Mark::Sub),
                    Some("sup") => Some(Mark::Sup),
                    _ => None,
                },
                "link" => attr_text(mark, "href")
                    .map(|href| Mark::Link(link_target(&resolve_href(href, self.ctx.base_url)))),
                // textColor, backgroundColor, alignment, indentation, border, annotation,
                // fragment, breakout, dataConsumer, unknown.
                _ => None,
            })
            .collect()
    }
}

#[derive(Clone, Copy)]
enum Marker {
    Bullet,
    Number,
    Task(bool),
    Decision,
}

struct ListItem {
    marker: Marker,
    blocks: Vec<Block>,
}

fn default_marker(list_type: &str) -> Marker {
    match list_type {
        "orderedList" => Marker::Number,
        "taskList" => Marker::Task(false),
        "decisionList" => Marker::Decision,
        _ => Marker::Bullet,
    }
}

/// `> ` before every line. In a table cell, where blank lines are dropped anyway, a
/// blank line gets no lone `>` either.
fn quote(blocks: &[Block], in_table: bool) -> Option<Block> {
    let body = join_blocks(blocks, false);
    if body.is_empty() {
        return None;
    }
    let lines: Vec<String> = body
        .split('\n')
        .filter_map(|line| match (line.is_empty(), in_table) {
            (false, _) => Some(format!("> {line}")),
            (true, false) => Some(">".to_owned()),
            (true, true) => None,
        })
        .collect();
    Some(Block::other(lines.join("\n")))
}

fn code_block(node: &Value, scope: Scope) -> Option<Block> {
    let mut code = String::new();
    plain_text(node, scope.depth, &mut code);
    let code = normalize_newlines(&code);
    if scope.in_table {
        // No fenced blocks in a cell: one code span per line.
        let spans: Vec<String> = code
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(code_span)
            .collect();
        return (!spans.is_empty()).then(|| Block::other(spans.join("\n")));
    }
    // The info string ends at whitespace, and a backtick fence's may not contain backticks.
    let language: String = attr_str(node, "language")
        .unwrap_or("")
        .split_whitespace()
        .next()
        .unwrap_or("")
        .chars()
        .filter(|&c| c != '`')
        .collect();
    let fence = "`".repeat((longest_run(&code, '`') + 1).max(3));
    let mut text = format!("{fence}{language}\n{code}");
    if !code.is_empty() && !code.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(&fence);
    Some(Block::other(text))
}

/// All text below a node, as typed (for code blocks).
fn plain_text(node: &Value, depth: usize, out: &mut String) {
    if depth > MAX_DEPTH {
        return;
    }
    match node {
        Value::String(text) => out.push_str(text),
        _ if node_type(node) == "hardBreak" => out.push('\n'),
        _ => {
            if let Some(text) = text_field(node) {
                out.push_str(text);
            }
            for child in children(node) {
                plain_text(child, depth + 1, out);
            }
        }
    }
}

fn table_row(cells: &[String], columns: usize) -> String {
    let mut row = String::from("|");
    for i in 0..columns {
        match cells.get(i).filter(|c| !c.is_empty()) {
            Some(cell) => {
                row.push(' ');
                row.push_str(cell);
                row.push_str(" |");
            }
            None => row.push_str(" |"),
        }
    }
    row
}

fn extension_placeholder(node: &Value) -> String {
    match attr_text(node, "extensionKey") {
        Some(key) => escape_text(&format!("[extension: {}]", one_line(key))),
        None => escape_text("[extension]"),
    }
}

// ---------------------------------------------------------------------------------------
// Links, dates, names

/// An href as the page means it: absolute URLs and `#anchors` as they are, site-relative
/// paths joined to the wiki base URL (without doubling its `/wiki`), other relative
/// paths appended to it.
fn resolve_href(href: &str, base: &str) -> String {
    let href = href.trim();
    if href.is_empty() || href.starts_with('#') || scheme_len(href).is_some() {
        return href.to_owned();
    }
    if let Some(rest) = href.strip_prefix("//") {
        return format!("https://{rest}");
    }
    let base = base.trim().trim_end_matches('/');
    if base.is_empty() {
        return href.to_owned();
    }
    if href.starts_with('/') {
        let (origin, base_path) = split_origin(base);
        if !base_path.is_empty()
            && (href == base_path
                || href
                    .strip_prefix(base_path)
                    .is_some_and(|rest| rest.starts_with(['/', '?', '#'])))
        {
            return format!("{origin}{href}");
        }
        return format!("{base}{href}");
    }
    format!("{base}/{href}")
}

/// "https://x.atlassian.net/wiki" → ("https://x.atlassian.net", "/wiki").
fn split_origin(url: &str) -> (&str, &str) {
    let Some(after_scheme) = url.find("://").map(|i| i + 3) else {
        return (url, "");
    };
    match url[after_scheme..].find('/') {
        Some(slash) => url.split_at(after_scheme + slash),
        None => (url, ""),
    }
}

/// The length of a URI scheme (`https`, `mailto`) at the start, if there is one.
fn scheme_len(url: &str) -> Option<usize> {
    let colon = url.find(':')?;
    let scheme = &url[..colon];
    let mut chars = scheme.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    valid.then_some(colon)
}

/// `<url>` when CommonMark accepts it as an autolink, else `[url](url)`.
fn autolink(url: &str) -> String {
    let ok = scheme_len(url).is_some_and(|n| (2..=32).contains(&n))
        && !url
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '<' || c == '>');
    if ok {
        format!("<{url}>")
    } else {
        format!("[{}]({})", escape_text(&one_line(url)), link_target(url))
    }
}

/// The last path segment of a link, percent-decoded (the alt text of an attachment).
fn file_name(link: &str, is_url: bool) -> String {
    let link = link
        .strip_prefix('<')
        .and_then(|l| l.strip_suffix('>'))
        .unwrap_or(link);
    let path = if is_url {
        link.split(['?', '#']).next().unwrap_or("")
    } else {
        link
    };
    one_line(&percent_decode(path.rsplit('/').next().unwrap_or("")))
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `attrs.timestamp` (milliseconds since the epoch, as a string or a number) as the
/// UTC calendar date `YYYY-MM-DD`.
fn iso_date(timestamp: &Value) -> Option<String> {
    let ms = match timestamp {
        Value::Number(n) => n.as_i64().or_else(|| float_ms(n.as_f64()?))?,
        Value::String(s) => {
            let s = s.trim();
            s.parse::<i64>()
                .ok()
                .or_else(|| float_ms(s.parse::<f64>().ok()?))?
        }
        _ => return None,
    };
    let (year, month, day) = civil_from_days(ms.div_euclid(86_400_000));
    Some(if (0..=9999).contains(&year) {
        format!("{year:04}-{month:02}-{day:02}")
    } else {
        format!("{year}-{month:02}-{day:02}")
    })
}

fn float_ms(f: f64) -> Option<i64> {
    // `as` saturates at the i64 range, which is far beyond any real date.
    f.is_finite().then_some(f as i64)
}

/// Days since 1970-01-01 → proleptic Gregorian (year, month, day). The calendar repeats
/// every 400 years (146 097 days); counting from 0000-03-01 puts the leap day at the end
/// of each year, so the month follows from the day of the year by a linear formula.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    const DAYS_PER_ERA: i64 = 146_097;
    // 1970-01-01 is day 719 468 counted from 0000-03-01.
    let z = days + 719_468;
    let era = z.div_euclid(DAYS_PER_ERA);
    let day_of_era = z.rem_euclid(DAYS_PER_ERA); // 0..=146_096
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153; // 0 = March … 11 = February
    let day = (day_of_year - (153 * month_from_march + 2) / 5 + 1) as u32;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

// ---------------------------------------------------------------------------------------
// Text

/// Escapes the characters that would otherwise be read as Markdown anywhere in a line.
fn escape_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for (i, c) in text.char_indices() {
        match c {
            '\\' | '`' | '*' | '_' | '[' | ']' | '<' | '~' => {
                out.push('\\');
                out.push(c);
            }
            '&' if starts_entity(&text[i + 1..]) => out.push_str("\\&"),
            _ => out.push(c),
        }
    }
    out
}

/// Whether `&` followed by this would be read as an entity (`&amp;`, `&#35;`).
fn starts_entity(rest: &str) -> bool {
    let name = rest.strip_prefix('#').unwrap_or(rest);
    let len = name.bytes().take_while(u8::is_ascii_alphanumeric).count();
    len > 0 && name.as_bytes().get(len) == Some(&b';')
}

/// Escapes what makes a line start a block: `#` heading, `>` quote, `-`/`+` list item,
/// `---`/`===` rules and setext underlines, `1.`/`1)` ordered list item, and a line that
/// could be a table's delimiter row (`--- | :---`), which would turn the line above into
/// a table header.
fn escape_line_start(line: &str) -> String {
    let bytes = line.as_bytes();
    let ends_marker = |i: usize| matches!(bytes.get(i), None | Some(b' ' | b'\t'));
    let only = |set: &[u8]| bytes.iter().all(|b| set.contains(b));
    let escape_at = match bytes.first() {
        Some(b'#' | b'>') => Some(0),
        Some(b'-') if ends_marker(1) || only(b"- \t") => Some(0),
        Some(b'|' | b'-' | b':') if only(b"|-: \t") && bytes.contains(&b'-') => Some(0),
        Some(b'+') if ends_marker(1) => Some(0),
        Some(b'=') if only(b"= \t") => Some(0),
        Some(b'0'..=b'9') => {
            let digits = bytes.iter().take_while(|b| b.is_ascii_digit()).count();
            (digits <= 9
                && matches!(bytes.get(digits), Some(b'.' | b')'))
                && ends_marker(digits + 1))
            .then_some(digits)
        }
        _ => None,
    };
    match escape_at {
        Some(i) => format!("{}\\{}", &line[..i], &line[i..]),
        None => line.to_owned(),
    }
}

/// A heading ending in `#`s after a space would lose them as a closing sequence.
fn escape_heading_end(text: &str) -> String {
    let kept = text.trim_end_matches('#');
    if kept.len() < text.len() && (kept.is_empty() || kept.ends_with([' ', '\t'])) {
        format!("{kept}\\{}", &text[kept.len()..])
    } else {
        text.to_owned()
    }
}

/// A code span whose fence is longer than any backtick run inside; padded with spaces
/// where the content would otherwise touch the fence or lose its own edge spaces.
fn code_span(raw: &str) -> String {
    let text: String = raw
        .chars()
        .map(|c| if c == '\n' || c == '\r' { ' ' } else { c })
        .collect();
    if text.is_empty() {
        return String::new();
    }
    let fence = "`".repeat(longest_run(&text, '`') + 1);
    let pad = text.starts_with('`')
        || text.ends_with('`')
        || (text.starts_with(' ') && text.ends_with(' ') && text.bytes().any(|b| b != b' '));
    if pad {
        format!("{fence} {text} {fence}")
    } else {
        format!("{fence}{text}{fence}")
    }
}

fn longest_run(text: &str, ch: char) -> usize {
    let mut longest = 0;
    let mut current = 0;
    for c in text.chars() {
        current = if c == ch { current + 1 } else { 0 };
        longest = longest.max(current);
    }
    longest
}

fn normalize_newlines(text: &str) -> String {
    text.replace("\r\n", "\n").replace('\r', "\n")
}

/// Text that must stay on one line (alt text, labels).
fn one_line(text: &str) -> String {
    text.split(['\n', '\r'])
        .filter(|part| !part.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

// ---------------------------------------------------------------------------------------
// Inline rendering: items → tokens (marks grouped) → Markdown

/// A mark that changes the Markdown. The order of the variants is the nesting order when
/// two marks cover the same run: link outermost, code innermost (nothing can be nested
/// in a code span).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Mark {
    /// The Markdown link target.
    Link(String),
    Strong,
    Em,
    Strike,
    Underline,
    Sub,
    Sup,
    Code,
}

impl Mark {
    fn rank(&self) -> u8 {
        match self {
            Mark::Link(_) => 0,
            Mark::Strong => 1,
            Mark::Em => 2,
            Mark::Strike => 3,
            Mark::Underline => 4,
            Mark::Sub => 5,
            Mark::Sup => 6,
            Mark::Code => 7,
        }
    }
}

/// Marks sorted by nesting order, one of each kind (a second link would nest links).
fn canonical(mut marks: Vec<Mark>) -> Vec<Mark> {
    marks.sort_by_key(Mark::rank);
    marks.dedup_by_key(|m| m.rank());
    marks
}

/// A piece of inline content with its marks.
struct Item {
    marks: Vec<Mark>,
    body: Body,
}

enum Body {
    /// Text as typed; escaped when rendered.
    Text(String),
    /// Already Markdown (mention, emoji, media…), with its plain text for code spans.
    Atom {
        md: String,
        plain: String,
    },
    Break,
}

impl Item {
    fn plain(&self) -> &str {
        match &self.body {
            Body::Text(text) => text,
            Body::Atom { plain, .. } => plain,
            Body::Break => " ",
        }
    }
}

/// Text as items: a newline inside text is a line break, except in code.
fn push_text(out: &mut Vec<Item>, text: &str, marks: Vec<Mark>) {
    let text = normalize_newlines(text);
    if marks.contains(&Mark::Code) {
        out.push(Item {
            marks,
            body: Body::Text(text),
        });
        return;
    }
    for (i, part) in text.split('\n').enumerate() {
        if i > 0 {
            out.push(Item {
                marks: Vec::new(),
                body: Body::Break,
            });
        }
        if !part.is_empty() {
            out.push(Item {
                marks: marks.clone(),
                body: Body::Text(part.to_owned()),
            });
        }
    }
}

/// Rendered inline content before delimiters are chosen.
enum Tok {
    /// Markdown text.
    Text(String),
    Break,
    /// Start and end of the marked run number N (an index into the span list).
    Open(usize),
    Close(usize),
}

/// How line breaks come out, and which escapes the finished text needs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// A paragraph: backslash breaks, block-start escapes on every line.
    Block,
    /// A heading is one line: breaks become spaces.
    Heading,
    /// A table cell: breaks become `<br>`.
    Cell,
}

fn render_inline(items: &[Item], mode: Mode) -> String {
    let entries: Vec<(Vec<Mark>, &Item)> = items
        .iter()
        .map(|item| (item.marks.clone(), item))
        .collect();
    let mut builder = TokBuilder::default();
    builder.run(&entries);
    let raw = linearize(&builder.toks, &builder.spans, mode);
    let trim = |line: &str| line.trim_matches([' ', '\t']).to_owned();
    match mode {
        Mode::Block => {
            // Every newline is a hard break, so every line but the last ends in its
            // backslash; the spaces before that are trimmed like those at a line's end.
            let lines: Vec<&str> = raw.split('\n').collect();
            let last = lines.len() - 1;
            let mut text = String::with_capacity(raw.len());
            for (i, line) in lines.into_iter().enumerate() {
                if i < last {
                    let content = line.strip_suffix('\\').unwrap_or(line);
                    text.push_str(&escape_line_start(&trim(content)));
                    text.push_str("\\\n");
                } else {
                    text.push_str(&escape_line_start(&trim(line)));
                }
            }
            text
        }
        Mode::Heading => escape_heading_end(&trim(&raw)),
        Mode::Cell => trim(&raw),
    }
}

#[derive(Default)]
struct TokBuilder {
    toks: Vec<Tok>,
    /// The mark of each marked run, indexed by the number in `Tok::Open`/`Tok::Close`.
    spans: Vec<Mark>,
}

impl TokBuilder {
    /// Renders items whose marks not yet applied are given alongside. Of the marks of the
    /// first item, the one that runs over the most following items goes outermost (ties
    /// in nesting order); its run is rendered recursively without it.
    fn run(&mut self, entries: &[(Vec<Mark>, &Item)]) {
        let mut i = 0;
        while i < entries.len() {
            let marks = &entries[i].0;
            let only_code = |ms: &Vec<Mark>| ms.len() == 1 && ms[0] == Mark::Code;
            if marks.is_empty() {
                self.emit(entries[i].1);
                i += 1;
                continue;
            }
            if only_code(marks) {
                let run = entries[i..]
                    .iter()
                    .take_while(|(ms, _)| only_code(ms))
                    .count();
                let text: String = entries[i..i + run]
                    .iter()
                    .map(|(_, it)| it.plain())
                    .collect();
                let span = code_span(&text);
                if !span.is_empty() {
                    self.toks.push(Tok::Text(span));
                }
                i += run;
                continue;
            }
            let extent = |m: &Mark| {
                entries[i..]
                    .iter()
                    .take_while(|(ms, _)| ms.contains(m))
                    .count()
            };
            let mut best: Option<(&Mark, usize)> = None;
            for mark in marks.iter().filter(|m| **m != Mark::Code) {
                let len = extent(mark);
                if best.is_none_or(|(_, best_len)| len > best_len) {
                    best = Some((mark, len));
                }
            }
            let Some((mark, len)) = best else {
                // Unreachable (canonical marks hold at most one Code); render plainly.
                self.emit(entries[i].1);
                i += 1;
                continue;
            };
            let inner: Vec<(Vec<Mark>, &Item)> = entries[i..i + len]
                .iter()
                .map(|(ms, it)| (ms.iter().filter(|m| *m != mark).cloned().collect(), *it))
                .collect();
            let start = self.toks.len();
            self.run(&inner);
            self.wrap(mark.clone(), start);
            i += len;
        }
    }

    fn emit(&mut self, item: &Item) {
        match &item.body {
            Body::Text(text) if !text.is_empty() => self.toks.push(Tok::Text(escape_text(text))),
            Body::Text(_) => {}
            Body::Atom { md, .. } => self.toks.push(Tok::Text(md.clone())),
            Body::Break => self.toks.push(Tok::Break),
        }
    }

    /// Puts the tokens from `start` on under `mark`, with edge whitespace and breaks
    /// moved outside the delimiters.
    fn wrap(&mut self, mark: Mark, start: usize) {
        let inner = self.toks.split_off(start);
        let (lead, core, trail) = split_edges(inner);
        self.toks.extend(lead);
        if !core.is_empty() {
            let id = self.spans.len();
            self.spans.push(mark);
            self.toks.push(Tok::Open(id));
            self.toks.extend(core);
            self.toks.push(Tok::Close(id));
        }
        self.toks.extend(trail);
    }
}

/// Splits tokens into leading whitespace/breaks, the core, and trailing whitespace/breaks.
fn split_edges(toks: Vec<Tok>) -> (Vec<Tok>, Vec<Tok>, Vec<Tok>) {
    let mut core: VecDeque<Tok> = toks.into();
    let mut lead = Vec::new();
    while let Some(tok) = core.pop_front() {
        match tok {
            Tok::Break => lead.push(Tok::Break),
            Tok::Text(text) => {
                let rest = text.trim_start();
                if rest.len() < text.len() {
                    lead.push(Tok::Text(text[..text.len() - rest.len()].to_owned()));
                }
                if !rest.is_empty() {
                    core.push_front(Tok::Text(rest.to_owned()));
                    break;
                }
            }
            other => {
                core.push_front(other);
                break;
            }
        }
    }
    let mut trail = Vec::new();
    while let Some(tok) = core.pop_back() {
        match tok {
            Tok::Break => trail.push(Tok::Break),
            Tok::Text(text) => {
                let kept = text.trim_end();
                if kept.len() < text.len() {
                    trail.push(Tok::Text(text[kept.len()..].to_owned()));
                }
                if !kept.is_empty() {
                    core.push_back(Tok::Text(kept.to_owned()));
                    break;
                }
            }
            other => {
                core.push_back(other);
                break;
            }
        }
    }
    trail.reverse();
    (lead, core.into(), trail)
}

/// Tokens to Markdown. Breaks and blank text at the ends are dropped (a hard break cannot
/// end a block); each `**`/`_`/`~~` pair is checked against CommonMark's flanking rules
/// and written as an HTML tag where Markdown would not recognise it.
fn linearize(toks: &[Tok], spans: &[Mark], mode: Mode) -> String {
    let blank = |t: &Tok| match t {
        Tok::Break => true,
        Tok::Text(text) => text.trim().is_empty(),
        _ => false,
    };
    let start = toks.iter().position(|t| !blank(t)).unwrap_or(toks.len());
    let end = toks
        .iter()
        .rposition(|t| !blank(t))
        .map_or(start, |p| p + 1);
    let toks = &toks[start..end];
    let markdown_ok = delimiters_ok(toks, spans);
    let mut out = String::new();
    // Spaces around a break are dropped, as Markdown drops them at a line's edges.
    let mut after_break = false;
    for tok in toks {
        match *tok {
            Tok::Text(ref text) => {
                let text = if after_break {
                    text.trim_start_matches([' ', '\t'])
                } else {
                    text
                };
                push_piece(&mut out, text);
                after_break &= text.is_empty();
            }
            Tok::Break => {
                out.truncate(out.trim_end_matches([' ', '\t']).len());
                out.push_str(match mode {
                    Mode::Block => "\\\n",
                    Mode::Heading => " ",
                    Mode::Cell => "<br>",
                });
                after_break = true;
            }
            Tok::Open(id) => {
                push_piece(&mut out, &open_markup(&spans[id], markdown_ok[id]));
                after_break = false;
            }
            Tok::Close(id) => {
                out.push_str(&close_markup(&spans[id], markdown_ok[id]));
                after_break = false;
            }
        }
    }
    out
}

/// Appends Markdown; a `!` right before a `[` would turn the link into an image.
fn push_piece(out: &mut String, piece: &str) {
    if piece.starts_with('[') && out.ends_with('!') {
        out.pop();
        out.push_str("\\!");
    }
    out.push_str(piece);
}

fn open_markup(mark: &Mark, markdown: bool) -> String {
    match (mark, markdown) {
        (Mark::Link(_), _) => "[",
        (Mark::Strong, true) => "**",
        (Mark::Strong, false) => "<strong>",
        (Mark::Em, true) => "_",
        (Mark::Em, false) => "<em>",
        (Mark::Strike, true) => "~~",
        (Mark::Strike, false) => "<del>",
        (Mark::Underline, _) => "<u>",
        (Mark::Sub, _) => "<sub>",
        (Mark::Sup, _) => "<sup>",
        (Mark::Code, _) => "",
    }
    .to_owned()
}

fn close_markup(mark: &Mark, markdown: bool) -> String {
    match (mark, markdown) {
        (Mark::Link(target), _) => return format!("]({target})"),
        (Mark::Strong, true) => "**",
        (Mark::Strong, false) => "</strong>",
        (Mark::Em, true) => "_",
        (Mark::Em, false) => "</em>",
        (Mark::Strike, true) => "~~",
        (Mark::Strike, false) => "</del>",
        (Mark::Underline, _) => "</u>",
        (Mark::Sub, _) => "</sub>",
        (Mark::Sup, _) => "</sup>",
        (Mark::Code, _) => "",
    }
    .to_owned()
}

/// The class of a character for CommonMark's delimiter rules.
#[derive(Clone, Copy, PartialEq, Eq)]
enum CharClass {
    Space,
    Punct,
    Other,
}

fn char_class(c: char) -> CharClass {
    if c.is_whitespace() {
        CharClass::Space
    } else if c.is_ascii_punctuation() || (!c.is_ascii() && !c.is_alphanumeric()) {
        // Unicode punctuation and symbols count as punctuation; without the Unicode
        // category tables, "neither letter, digit nor space" is the approximation.
        CharClass::Punct
    } else {
        CharClass::Other
    }
}

/// The class of the character written just before token `i`. Delimiters and markup of
/// any kind (`*`, `_`, `[`, `<u>`, `](…)`) are punctuation; a break is a line end.
fn class_before(toks: &[Tok], i: usize) -> CharClass {
    for tok in toks[..i].iter().rev() {
        match tok {
            Tok::Text(text) => match text.chars().next_back() {
                Some(c) => return char_class(c),
                None => continue,
            },
            Tok::Break => return CharClass::Space,
            Tok::Open(_) | Tok::Close(_) => return CharClass::Punct,
        }
    }
    CharClass::Space
}

fn class_after(toks: &[Tok], i: usize) -> CharClass {
    for tok in &toks[i + 1..] {
        match tok {
            Tok::Text(text) => match text.chars().next() {
                Some(c) => return char_class(c),
                None => continue,
            },
            Tok::Break => return CharClass::Space,
            Tok::Open(_) | Tok::Close(_) => return CharClass::Punct,
        }
    }
    CharClass::Space
}

fn left_flanking(before: CharClass, after: CharClass) -> bool {
    after != CharClass::Space && (after != CharClass::Punct || before != CharClass::Other)
}

fn right_flanking(before: CharClass, after: CharClass) -> bool {
    before != CharClass::Space && (before != CharClass::Punct || after != CharClass::Other)
}

/// For every span, whether its Markdown delimiters would be recognised where they stand
/// (`*`/`~` runs open when left-flanking and close when right-flanking; `_` in addition
/// refuses to open or close inside a word).
fn delimiters_ok(toks: &[Tok], spans: &[Mark]) -> Vec<bool> {
    let mut ok = vec![true; spans.len()];
    let mut opened_at = vec![None; spans.len()];
    for (i, tok) in toks.iter().enumerate() {
        match *tok {
            Tok::Open(id) => opened_at[id] = Some(i),
            Tok::Close(id) => {
                let Some(open) = opened_at[id] else { continue };
                let underscore = match spans[id] {
                    Mark::Strong | Mark::Strike => false,
                    Mark::Em => true,
                    _ => continue,
                };
                let (before, after) = (class_before(toks, open), class_after(toks, open));
                let opens = left_flanking(before, after)
                    && (!underscore
                        || !right_flanking(before, after)
                        || before == CharClass::Punct);
                let (before, after) = (class_before(toks, i), class_after(toks, i));
                let closes = right_flanking(before, after)
                    && (!underscore || !left_flanking(before, after) || after == CharClass::Punct);
                ok[id] = opens && closes;
            }
            _ => {}
        }
    }
    ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const BASE: &str = "https://example.atlassian.net/wiki";

    fn attachments() -> HashMap<String, String> {
        [
            ("file-1", "attachments/architecture%20v2.png"),
            ("file-2", "<attachments/meeting notes (final).pdf>"),
            ("file-3", "attachments/report.pdf"),
        ]
        .into_iter()
        .map(|(id, link)| (id.to_owned(), link.to_owned()))
        .collect()
    }

    fn render(doc: &Value) -> String {
        let attachments = attachments();
        let ctx = RenderContext {
            attachments: &attachments,
            base_url: BASE,
        };
        to_markdown(doc, &ctx)
    }

    fn doc(content: Value) -> Value {
        json!({ "version": 1, "type": "doc", "content": content })
    }

    fn para(content: Value) -> Value {
        json!({ "type": "paragraph", "content": content })
    }

    fn text(t: &str) -> Value {
        json!({ "type": "text", "text": t })
    }

    fn marked(t: &str, marks: Value) -> Value {
        json!({ "type": "text", "text": t, "marks": marks })
    }

    fn item(content: Value) -> Value {
        json!({ "type": "listItem", "content": content })
    }

    #[test]
    fn every_node_fixture() {
        let adf: Value = serde_json::from_str(include_str!(
            "../../../tests/fixtures/atlassian/adf_every_node.json"
        ))
        .unwrap();
        let expected = include_str!("../../../tests/fixtures/atlassian/adf_every_node.md");
        let actual = render(&adf);
        assert_eq!(actual, expected, "\n--- actual ---\n{actual}");
    }

    #[test]
    fn nested_lists_indent_under_their_markers() {
        let adf = doc(json!([{
            "type": "bulletList",
            "content": [
                item(json!([
                    para(json!([text("outer")])),
                    { "type": "orderedList", "content": [
                        item(json!([
                            para(json!([text("middle")])),
                            { "type": "bulletList", "content": [item(json!([para(json!([text("inner")]))]))] }
                        ])),
                        item(json!([para(json!([text("middle 2")]))]))
                    ]}
                ])),
                item(json!([para(json!([text("outer 2")]))]))
            ]
        }]));
        assert_eq!(
            render(&adf),
            "- outer\n  1. middle\n     - inner\n  2. middle 2\n- outer 2\n"
        );
    }

    #[test]
    fn ordered_list_starts_at_order() {
        let items: Vec<Value> = (0..3)
            .map(|i| item(json!([para(json!([text(&format!("item {i}"))]))])))
            .collect();
        let adf =
            doc(json!([{ "type": "orderedList", "attrs": { "order": 8 }, "content": items }]));
        assert_eq!(render(&adf), "8. item 0\n9. item 1\n10. item 2\n");
        // A nested ordered list not starting at 1 cannot interrupt the item's paragraph.
        let adf = doc(json!([{ "type": "bulletList", "content": [item(json!([
            para(json!([text("a")])),
            { "type": "orderedList", "attrs": { "order": 4 }, "content": [item(json!([para(json!([text("b")]))]))] }
        ]))]}]));
        assert_eq!(render(&adf), "- a\n\n  4. b\n");
    }

    #[test]
    fn code_block_fence_outgrows_backticks_inside() {
        let adf = doc(json!([{
            "type": "codeBlock",
            "attrs": { "language": "md" },
            "content": [text("```\n``inner``\n```")]
        }]));
        assert_eq!(render(&adf), "````md\n```\n``inner``\n```\n````\n");
        let adf = doc(json!([{ "type": "codeBlock", "content": [text("a *b* <c>")] }]));
        assert_eq!(render(&adf), "```\na *b* <c>\n```\n");
    }

    #[test]
    fn table_cells_escape_pipes_and_break_lines() {
        let cell = |content: Value| json!({ "type": "tableCell", "content": content });
        let adf = doc(json!([{ "type": "table", "content": [
            { "type": "tableRow", "content": [
                cell(json!([para(json!([text("a | b")]))])),
                cell(json!([para(json!([text("one"), { "type": "hardBreak" }, text("two")]))]))
            ]},
            { "type": "tableRow", "content": [
                cell(json!([para(json!([text("x")])), para(json!([text("y")]))]))
            ]}
        ]}]));
        assert_eq!(
            render(&adf),
            "| | |\n| --- | --- |\n| a \\| b | one<br>two |\n| x<br>y | |\n"
        );
    }

    #[test]
    fn marks_keep_edge_whitespace_outside_delimiters() {
        let adf = doc(json!([para(json!([
            text("a"),
            marked(" bold ", json!([{ "type": "strong" }])),
            text("b"),
            marked(" it", json!([{ "type": "em" }])),
            marked("al ", json!([{ "type": "em" }, { "type": "strike" }])),
            text("c")
        ]))]));
        assert_eq!(render(&adf), "a **bold** b _it~~al~~_ c\n");
    }

    #[test]
    fn unrecognisable_delimiters_fall_back_to_html() {
        // Inside a word `_` never works; `**` before punctuation needs a non-letter before.
        let adf = doc(json!([para(json!([
            text("x"),
            marked("(y)", json!([{ "type": "strong" }])),
            text("z, snake"),
            marked("case", json!([{ "type": "em" }])),
            text("d")
        ]))]));
        assert_eq!(
            render(&adf),
            "x<strong>(y)</strong>z, snake<em>case</em>d\n"
        );
    }

    #[test]
    fn text_is_escaped() {
        let adf = doc(json!([
            para(json!([text("*a* _b_ [c](d) `e` \\ <f> ~g~")])),
            para(json!([text("# not a heading")])),
            para(json!([text("1. not a list")])),
            para(json!([text("- not a bullet"), { "type": "hardBreak" }, text("> not a quote")])),
            para(json!([text("fine: 2.5 - x # y")]))
        ]));
        assert_eq!(
            render(&adf),
            "\\*a\\* \\_b\\_ \\[c\\](d) \\`e\\` \\\\ \\<f> \\~g\\~\n\n\
             \\# not a heading\n\n\
             1\\. not a list\n\n\
             \\- not a bullet\\\n\\> not a quote\n\n\
             fine: 2.5 - x # y\n"
        );
    }

    #[test]
    fn media_with_known_and_unknown_ids() {
        let media = |id: &str, alt: Option<&str>| {
            let mut attrs = json!({ "id": id, "type": "file", "collection": "" });
            if let Some(alt) = alt {
                attrs["alt"] = json!(alt);
            }
            json!({ "type": "mediaSingle", "content": [{ "type": "media", "attrs": attrs }] })
        };
        let adf = doc(json!([
            media("file-1", Some("Diagram")),
            media("file-2", None),
            media("nope", None),
            media("nope", Some("Lost"))
        ]));
        assert_eq!(
            render(&adf),
            "![Diagram](attachments/architecture%20v2.png)\n\n\
             ![meeting notes (final).pdf](<attachments/meeting notes (final).pdf>)\n\n\
             ![attachment](attachment:nope \"attachment not found\")\n\n\
             ![Lost](attachment:nope \"attachment not found\")\n"
        );
    }

    #[test]
    fn linked_inline_media_is_not_nested_in_a_second_link() {
        let link = json!([{ "type": "link", "attrs": { "href": "https://example.com/x" } }, { "type": "strong" }]);
        let adf = doc(json!([para(json!([
            { "type": "media", "attrs": { "id": "file-3", "type": "file" }, "marks": link },
            text(" "),
            { "type": "mediaInline", "attrs": { "id": "file-3" }, "marks": link },
            text(" "),
            { "type": "inlineCard", "attrs": { "url": "https://example.com/c" }, "marks": link }
        ]))]));
        assert_eq!(
            render(&adf),
            "**[![report.pdf](attachments/report.pdf)](https://example.com/x)** \
             **[report.pdf](attachments/report.pdf)** **<https://example.com/c>**\n"
        );
    }

    #[test]
    fn relative_links_join_the_base_url() {
        let link =
            |t: &str, href: &str| marked(t, json!([{ "type": "link", "attrs": { "href": href } }]));
        let adf = doc(json!([para(json!([
            link("a", "/wiki/spaces/X/pages/1"),
            text(" "),
            link("b", "/spaces/Y"),
            text(" "),
            link("c", "pages/2"),
            text(" "),
            link("d", "#anchor"),
            text(" "),
            link("e", "mailto:x@example.com"),
            text("!"),
            link("f", "https://example.com/(x)")
        ]))]));
        assert_eq!(
            render(&adf),
            "[a](https://example.atlassian.net/wiki/spaces/X/pages/1) \
             [b](https://example.atlassian.net/wiki/spaces/Y) \
             [c](https://example.atlassian.net/wiki/pages/2) [d](#anchor) \
             [e](mailto:x@example.com)\\![f](<https://example.com/(x)>)\n"
        );
    }

    #[test]
    fn malformed_input_never_panics_and_keeps_text() {
        let cases = [
            json!(null),
            json!(42),
            json!("bare string"),
            json!([]),
            json!({}),
            json!({ "type": "doc" }),
            json!({ "type": "doc", "content": "loose text" }),
            json!({ "type": "doc", "content": { "type": "paragraph", "content": [text("lone object")] } }),
            json!({ "type": "doc", "content": [null, 1, true, [], {}, { "type": 7 }] }),
            json!({ "type": "doc", "content": [{ "type": "heading", "attrs": { "level": "x" }, "content": [text("h")] }] }),
            json!({ "type": "doc", "content": [{ "type": "orderedList", "attrs": { "order": -3 }, "content": [text("t")] }] }),
            json!({ "type": "doc", "content": [{ "type": "table", "content": [text("t"), { "type": "tableRow", "content": [{ "type": "tableCell", "attrs": { "colspan": 1e300 } }] }] }] }),
            json!({ "type": "doc", "content": [{ "type": "paragraph", "content": [{ "type": "text", "text": 5, "marks": "strong" }, { "type": "date", "attrs": { "timestamp": "soon" } }, { "type": "mention" }, { "type": "media" }] }] }),
            json!({ "type": "doc", "content": [{ "type": "mediaSingle", "content": [{ "type": "media", "attrs": { "type": "external" } }] }, { "type": "blockCard", "attrs": "x" }, { "type": "codeBlock", "attrs": [] }] }),
        ];
        for case in &cases {
            let md = render(case);
            assert!(
                md.is_empty() || md.ends_with('\n') && !md.ends_with("\n\n"),
                "{md:?}"
            );
        }
        assert_eq!(render(&json!(null)), "");
        assert_eq!(render(&json!("bare string")), "bare string\n");
        assert_eq!(render(&cases[6]), "loose text\n");
        assert_eq!(render(&cases[7]), "lone object\n");
        assert_eq!(render(&cases[9]), "# h\n");
        // A negative start is not a list number: the default 1 is used.
        assert_eq!(render(&cases[10]), "1. t\n");

        // Unknown nodes render the text inside them, inline or as blocks.
        let adf = doc(json!([
            { "type": "sparkle", "content": [text("unknown inline")] },
            { "type": "widget", "content": [para(json!([text("unknown block")]))] },
            para(json!([text("a "), { "type": "fancy", "text": "fancy", "content": [text(" text")] }]))
        ]));
        assert_eq!(
            render(&adf),
            "unknown inline\n\nunknown block\n\na fancy text\n"
        );

        // Nesting deeper than the limit is dropped, not a stack overflow. (Built by hand:
        // `json!` would clone the growing value recursively.)
        let wrap = |inner: Value| {
            let mut node = serde_json::Map::new();
            node.insert("type".into(), json!("blockquote"));
            node.insert("content".into(), Value::Array(vec![inner]));
            Value::Object(node)
        };
        let mut shallow = para(json!([text("bottom")]));
        for _ in 0..10 {
            shallow = wrap(shallow);
        }
        assert_eq!(
            render(&doc(json!([shallow]))),
            format!("{}bottom\n", "> ".repeat(10))
        );
        let mut deep = para(json!([text("bottom")]));
        for _ in 0..300 {
            deep = wrap(deep);
        }
        let mut top = serde_json::Map::new();
        top.insert("type".into(), json!("doc"));
        top.insert(
            "content".into(),
            Value::Array(vec![deep, para(json!([text("after")]))]),
        );
        let top = Value::Object(top);
        assert_eq!(render(&top), "after\n");
        assert!(media_file_ids(&top).is_empty());
    }

    #[test]
    fn rendering_is_deterministic() {
        let adf: Value = serde_json::from_str(include_str!(
            "../../../tests/fixtures/atlassian/adf_every_node.json"
        ))
        .unwrap();
        let first = render(&adf);
        for _ in 0..5 {
            // A fresh HashMap each time: its iteration order must not matter.
            assert_eq!(render(&adf), first);
        }
    }

    #[test]
    fn media_file_ids_in_order_without_duplicates() {
        let adf: Value = serde_json::from_str(include_str!(
            "../../../tests/fixtures/atlassian/adf_every_node.json"
        ))
        .unwrap();
        assert_eq!(
            media_file_ids(&adf),
            ["file-3", "file-1", "file-2", "file-missing"]
        );
        assert!(media_file_ids(&json!(null)).is_empty());
        assert!(media_file_ids(&doc(json!([para(json!([text("x")]))]))).is_empty());
    }

    #[test]
    fn link_targets() {
        assert_eq!(link_target("a/b.png"), "a/b.png");
        assert_eq!(link_target("a/my file.png"), "<a/my file.png>");
        assert_eq!(link_target("a/f(1).png"), "<a/f(1).png>");
        assert_eq!(link_target("a<b>\nc"), "a%3Cb%3E%0Ac");
        assert_eq!(link_target("x y\\"), "<x y%5C>");
        assert_eq!(link_target(""), "<>");
    }

    #[test]
    fn dates_are_utc_calendar_days() {
        let date = |ts: Value| iso_date(&ts);
        assert_eq!(date(json!("0")).as_deref(), Some("1970-01-01"));
        assert_eq!(date(json!(-1)).as_deref(), Some("1969-12-31"));
        assert_eq!(date(json!("951782400000")).as_deref(), Some("2000-02-29"));
        assert_eq!(date(json!(951868800000_i64)).as_deref(), Some("2000-03-01"));
        assert_eq!(date(json!("4107542399999")).as_deref(), Some("2100-02-28"));
        assert_eq!(date(json!("4107542400000")).as_deref(), Some("2100-03-01"));
        assert_eq!(date(json!("x")), None);
    }
}
