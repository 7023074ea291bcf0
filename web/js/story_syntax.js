// The Story Prompt syntax, read in the browser for live feedback while typing.
// Mirrors story/syntax.py (the server's parser, which stays the authority): one panel per line,
// "[Name]: description" declares a character, [Name] tags it in a panel, [NC] = no character,
// text after "#" is the caption, "//" comments a line out. Unlike the server, this never stops
// at the first problem: it reports every panel and every unknown tag so they can be highlighted.
// No ComfyUI import here; story_prompt_feedback.js draws the result on the node.

const TAG_RE = /\[([^\[\]\n]*)\]/g;
const DECLARATION_RE = /^\s*\[([^\[\]\n]+)\]\s*:\s*(.*)$/;
const NAME_RE = /^[^\s\[\]#:][^\[\]#:]*$/;
const NO_CHARACTER = "NC";

/**
 * @param {string} text the story
 * @returns {{characters: Object<string,string>, panels: Array<{line:number, characters:string[],
 *   unknown:string[], noCharacter:boolean, caption:string, segments:Array<{text:string, kind:string}>}>,
 *   problems: string[]}}
 */
export function readStory(text) {
  const characters = {};
  const problems = [];
  const panelLines = [];
  String(text ?? "").split(/\r\n|\r|\n/).forEach((raw, i) => {
    const lineNo = i + 1;
    const line = raw.trim();
    if (!line || line.startsWith("//")) return;
    const decl = line.match(DECLARATION_RE);
    if (decl && !line.split(":", 1)[0].includes("#")) {
      const name = decl[1].trim();
      if (!NAME_RE.test(name)) problems.push(`line ${lineNo}: '[${decl[1]}]' is not a valid character name`);
      else if (name.toUpperCase() === NO_CHARACTER) problems.push(`line ${lineNo}: [NC] is reserved for panels with no character`);
      else if (!decl[2].trim()) problems.push(`line ${lineNo}: [${name}] is declared without a description`);
      else if (name in characters) problems.push(`line ${lineNo}: [${name}] is declared twice`);
      else characters[name] = decl[2].trim();
      return;
    }
    panelLines.push([lineNo, line]);
  });
  const known = new Map(Object.keys(characters).map((n) => [n.toLowerCase(), n]));
  const panels = panelLines.map(([lineNo, line]) => {
    const hash = line.indexOf("#");
    const body = hash >= 0 ? line.slice(0, hash) : line;
    const caption = hash >= 0 ? line.slice(hash + 1).trim() : "";
    const panel = { line: lineNo, characters: [], unknown: [], noCharacter: false, caption, segments: [] };
    const rest = body.replace(TAG_RE, (m) => " ".repeat(m.length));
    const opening = rest.indexOf("["), closing = rest.indexOf("]");
    if (opening >= 0 && (closing < 0 || opening < closing)) {
      problems.push(`line ${lineNo}: '${body.slice(opening).trim()}' has no closing ']'`);
    } else if (closing >= 0) {
      problems.push(`line ${lineNo}: ']' without an opening '['`);
    }
    let last = 0;
    for (const m of body.matchAll(TAG_RE)) {
      if (m.index > last) panel.segments.push({ text: body.slice(last, m.index), kind: "text" });
      const name = m[1].trim();
      let kind = "tag";
      if (name.toUpperCase() === NO_CHARACTER) {
        panel.noCharacter = true;
        kind = "nc";
      } else if (known.has(name.toLowerCase())) {
        const canonical = known.get(name.toLowerCase());
        if (!panel.characters.includes(canonical)) panel.characters.push(canonical);
      } else {
        panel.unknown.push(m[0]);
        kind = "unknown";
        problems.push(`line ${lineNo}: unknown character tag ${m[0]}`);
      }
      panel.segments.push({ text: m[0], kind });
      last = m.index + m[0].length;
    }
    if (last < body.length) panel.segments.push({ text: body.slice(last), kind: "text" });
    if (panel.noCharacter && panel.characters.length) problems.push(`line ${lineNo}: [NC] together with a character tag`);
    return panel;
  });
  if (!panels.length) problems.push("no panels yet: write one line per panel, e.g. [Bob] walks to work #Monday");
  return { characters, panels, problems };
}

/** "4 panels" / "1 panel" */
export function panelCountLabel(count) {
  return `${count} panel${count === 1 ? "" : "s"}`;
}
