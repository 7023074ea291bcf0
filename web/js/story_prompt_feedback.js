// Live feedback on the Story Prompt node while typing: the panel count, the characters found in
// each panel, and unknown [tags] highlighted (the server still validates before queueing).
// Loaded by ComfyUI from the pack's WEB_DIRECTORY (served at /extensions/<pack folder>/js/).
import { app } from "../../../scripts/app.js";
import { panelCountLabel, readStory } from "./story_syntax.js";

const NODE_ID = "StoryDiffPrompt";
const STYLE_ID = "storydiff-feedback-style";
const ROW_HEIGHT = 17;
const MAX_HEIGHT = 220;
// the story is the text a user writes: give it most of the node, and the usually empty negative
// box a few lines (classic canvas: DOM widget sizes; Nodes 2.0: the CSS below)
const STORY_MIN_HEIGHT = 200;
const NEGATIVE_MAX_HEIGHT = 56;
const CSS = `
.storydiff-feedback { font: 12px/1.35 sans-serif; color: var(--input-text, #ddd); background: rgba(0,0,0,.25);
  border-radius: 6px; padding: 4px 6px; overflow-y: auto; box-sizing: border-box; }
.storydiff-feedback .storydiff-count { font-weight: bold; }
.storydiff-feedback .storydiff-panel { white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
.storydiff-feedback .storydiff-unknown { background: #b3261e; color: #fff; border-radius: 3px; padding: 0 2px; }
.storydiff-feedback .storydiff-nc { color: #999; }
.storydiff-feedback .storydiff-problem { color: #ff8a80; }
textarea.storydiff-story { min-height: ${STORY_MIN_HEIGHT}px; }
textarea.storydiff-negative { max-height: ${NEGATIVE_MAX_HEIGHT}px; }
.lg-node-widget:has(> [node-type="${NODE_ID}"] > textarea[placeholder="story"]) { flex: 4 1 0; min-height: ${STORY_MIN_HEIGHT}px; }
.lg-node-widget:has(> [node-type="${NODE_ID}"] > textarea[placeholder="negative"]) { flex: 1 1 0; max-height: ${NEGATIVE_MAX_HEIGHT}px; }
`;

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text; // plain text only: the story is never parsed as HTML
  return node;
}

export function renderFeedback(container, text) {
  const story = readStory(text);
  const names = Object.keys(story.characters);
  container.replaceChildren();
  const head = el("div", "storydiff-head");
  head.append(el("span", "storydiff-count", panelCountLabel(story.panels.length)));
  head.append(document.createTextNode(names.length ? ` · characters: ${names.join(", ")}` : " · no character declared"));
  container.append(head);
  story.panels.forEach((panel, i) => {
    const row = el("div", "storydiff-panel");
    row.dataset.line = String(panel.line);
    const who = panel.noCharacter ? "no character" : panel.characters.join(" + ") || "no tag";
    row.append(document.createTextNode(`${i + 1}. ${who}`));
    for (const tag of panel.unknown) {
      row.append(document.createTextNode(" "));
      row.append(el("span", "storydiff-unknown", tag));
    }
    if (panel.caption) row.append(document.createTextNode(` — ${panel.caption}`));
    container.append(row);
  });
  for (const problem of story.problems.filter((p) => !p.includes("unknown character tag"))) {
    container.append(el("div", "storydiff-problem", problem));
  }
  container.dataset.panels = String(story.panels.length);
  container.dataset.unknown = String(story.panels.reduce((n, p) => n + p.unknown.length, 0));
  return story;
}

function sizeTextBoxes(node) {
  const story = node.widgets?.find((w) => w.name === "story");
  const negative = node.widgets?.find((w) => w.name === "negative");
  if (story?.options) story.options.getMinHeight = () => STORY_MIN_HEIGHT;
  if (negative?.options) negative.options.getMaxHeight = () => NEGATIVE_MAX_HEIGHT;
  (story?.element ?? story?.inputEl)?.classList?.add("storydiff-story");
  (negative?.element ?? negative?.inputEl)?.classList?.add("storydiff-negative");
}

function attach(node) {
  const storyWidget = node.widgets?.find((w) => w.name === "story");
  if (!storyWidget || node.widgets.some((w) => w.name === "story_feedback")) return;
  sizeTextBoxes(node);
  const box = el("div", "storydiff-feedback");
  const widget = node.addDOMWidget("story_feedback", "storydiff-feedback", box, {
    serialize: false,
    hideOnZoom: false,
    getValue: () => undefined,
    setValue: () => {},
    getMinHeight: () => Math.min(MAX_HEIGHT, 14 + ROW_HEIGHT * (box.childElementCount || 1)),
    getMaxHeight: () => MAX_HEIGHT,
  });
  widget.serialize = false; // never part of widgets_values or the prompt
  const update = () => {
    renderFeedback(box, storyWidget.value);
    const need = node.computeSize?.();
    if (need && need[1] > node.size[1]) node.setSize([Math.max(node.size[0], need[0]), need[1]]); // grow, never shrink
    node.setDirtyCanvas?.(true, true);
  };
  const original = storyWidget.callback;
  storyWidget.callback = function (...args) {
    const r = original?.apply(this, args);
    update();
    return r;
  };
  // the story's textarea: `element` on every front end (1.32 and 1.48); `inputEl` warns as
  // deprecated on 1.48. Input events bubble, so a wrapper element would do as well.
  storyWidget.element?.addEventListener("input", update);
  const configure = node.onConfigure;
  node.onConfigure = function (...args) {
    const r = configure?.apply(this, args);
    update();
    return r;
  };
  update();
}

app.registerExtension({
  name: "storydiffusion.StoryPromptFeedback",
  setup() {
    if (!document.getElementById(STYLE_ID)) {
      const style = el("style");
      style.id = STYLE_ID;
      style.textContent = CSS;
      document.head.append(style);
    }
  },
  async nodeCreated(node) {
    if (node.comfyClass === NODE_ID) attach(node);
  },
});
