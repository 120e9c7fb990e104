"use strict";
// The data files call these as they load (data/points.js first, data/col-<j>.js later): see cluster/map_data.py.
window.MAPDATA = (() => {
  let points = null;
  const columns = [], waiting = new Map();
  return {
    points(p) { points = p; },
    column(j, c) { columns[j] = c; (waiting.get(j) || []).forEach(f => f(c)); waiting.delete(j); },
    get points_() { return points; },
    col(j) { return columns[j]; },
    when(j, f) { if (columns[j]) f(columns[j]); else { if (!waiting.has(j)) waiting.set(j, []); waiting.get(j).push(f); } },
  };
})();
