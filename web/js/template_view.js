// The view a template of this pack opens with: the whole graph, previews included, at the largest
// zoom (up to 1) that fits this window clear of the side bar, the top bars and the minimap corner,
// in either node renderer. Templates carry a view computed for a 1400x900 window on the classic
// canvas (extra.ds); the window may differ, and with Nodes 2.0 the front end spreads a classic
// layout by 1.2 (Vue nodes are larger) before it restores that saved view. Applies only to
// workflows marked extra.storydiffusion (this pack's templates), once per load.
import { app } from "../../../scripts/app.js";

// keep in step with scripts/workflow_graph.py (ORIGIN_PX, CORNER_PX, MARGIN_PX)
const ORIGIN = [60, 170];
const CORNER = [270, 275]; // from the bottom-right of the window: the minimap and canvas controls
const MARGIN = 12;
const TITLE = 30;

export function fitScale(boxes, width, height) {
  for (let step = 100; step >= 30; step -= 1) {
    const s = step / 100;
    const fits = boxes.every(([x, y, w, h]) => {
      const right = ORIGIN[0] + s * (x + w);
      const bottom = ORIGIN[1] + s * (y + h);
      return right <= width - MARGIN && bottom <= height - MARGIN &&
        !(right > width - CORNER[0] - MARGIN && bottom > height - CORNER[1] - MARGIN);
    });
    if (fits) return s;
  }
  return 0.3;
}

app.registerExtension({
  name: "storydiffusion.TemplateView",
  async afterConfigureGraph() {
    const graph = app.graph;
    const canvas = app.canvas;
    const mark = graph?.extra?.storydiffusion;
    if (!mark?.template || mark.fitted || !canvas?.ds || !graph.nodes?.length) return;
    const left = Math.min(...graph.nodes.map((n) => n.pos[0]));
    const top = Math.min(...graph.nodes.map((n) => n.pos[1])) - TITLE;
    const boxes = graph.nodes.map((n) => [n.pos[0] - left, n.pos[1] - TITLE - top, n.size[0], n.size[1] + TITLE]);
    const rect = canvas.canvas.getBoundingClientRect();
    const s = fitScale(boxes, rect.width, rect.height);
    canvas.ds.scale = s;
    canvas.ds.offset = [ORIGIN[0] / s - left, ORIGIN[1] / s - top];
    mark.fitted = true; // a saved copy reopens with the view it was saved with
    canvas.setDirty(true, true);
  },
});
