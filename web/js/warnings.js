// Warnings from the pack's nodes during a run (nodes/user_warnings.py): shown as a toast naming
// the node, so a mistake that does not stop the run is still seen on the canvas.
import { app } from "../../../scripts/app.js";
import { api } from "../../../scripts/api.js";

app.registerExtension({
  name: "storydiffusion.Warnings",
  setup() {
    api.addEventListener("storydiffusion.warning", ({ detail }) => {
      const toast = app.extensionManager?.toast;
      if (toast?.add) toast.add({ severity: "warn", summary: detail.node, detail: detail.message, life: 15000 });
      else console.warn(detail.message);
    });
  },
});
