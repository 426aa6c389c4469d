--[[
The library sweep files get as `require "sweep"`, embedded in the `sweep`
binary (cli/sweepfile.c loads it into each sweep file's sandbox).

A sweep is a name, a base config, a list of cells (each a table of config
key = value settings over the base), repeats, reference errors and a report
layout. This file holds the Lua half of that: the helpers that build cell
lists (grid, filter, concat, cell), the shape checks of sweep{}, and the
defaults (label, layout, reference). The C half resolves each cell into an
engine config, checks it there and calls the functions below under the
sandbox's budgets.

Invariants:
- Every cell made here remembers the sweep file's line it came from, in a
  side table (never as a key of the cell, which holds config keys only), so
  errors found later in C point at that line.
- Nothing here hands the sweep file a privileged function: the `debug`
  function kept below is a local, and the host table (what C reads) is not
  part of the module.
- Orders are deterministic: grids expand in a fixed order, never in
  pairs() order (which Lua randomizes per process).
]]

local host = ...                        -- filled below; C keeps it, sweep files never see it
local getinfo = debug.getinfo           -- for call lines only; `debug` is gone after loading
local LIB = getinfo(1, "S").source

local M = {}

local lines = setmetatable({}, {__mode = "k"})    -- cell table -> line
local made = setmetatable({}, {__mode = "k"})     -- the records sweep{} returned

-- name -> {src, line}: where the file last named sweep.NAME (see the
-- module's __index at the end of this file); `current` is the function
-- running, whose entry stands in when the file's frame is gone.
local access, current = {}, nil
local from_host = false                 -- C is normalizing a plain table

-- The line of the sweep file that is running now: the outermost frame
-- outside this library, i.e. the top-level statement of the sweep file (the
-- call of sweep.grid itself, or of the file's own helper that called it).
-- `return sweep.sweep{...}` is a tail call, which removes the file's frame
-- from the stack; the line where it named sweep.sweep stands in for it.
-- nil when no sweep-file code is involved (C normalizing a plain table).
local function caller()
  local src, line
  for level = 2, 200 do
    local info = getinfo(level, "Sl")
    if not info then break end
    if info.what ~= "C" and info.source ~= LIB and info.currentline > 0 then
      src, line = info.short_src, info.currentline
    end
  end
  local seen = access[current]
  if not src and not from_host and seen then src, line = seen[1], seen[2] end
  return src, line
end

local function fail(fmt, ...)
  local msg = string.format(fmt, ...)
  local src, line = caller()
  if src then msg = string.format("%s:%d: %s", src, line, msg) end
  error(msg, 0)
end

local function copy(t)
  local c = {}
  for k, v in pairs(t) do c[k] = v end
  return c
end

local function is_list(t)
  local n = 0
  for _ in pairs(t) do n = n + 1 end
  return n == #t
end

local function check_list(t, what)
  if type(t) ~= "table" then fail("%s must be a list, not a %s", what, type(t)) end
  if not is_list(t) then fail("%s must be a list (keys 1..n only)", what) end
end

local function check_cells(cells, what)
  check_list(cells, what)
  for i = 1, #cells do
    if type(cells[i]) ~= "table" then
      fail("%s[%d] is a %s, not a cell (a table of key = value settings)", what, i, type(cells[i]))
    end
  end
end

-- The sorted string keys of t.
local function keys(t)
  local ks = {}
  for k in pairs(t) do
    if type(k) == "string" then ks[#ks + 1] = k end
  end
  table.sort(ks)
  return ks
end

local function text(v)
  if math.type(v) == "float" and v == math.floor(v) and math.abs(v) < 1e15 then
    return string.format("%d", v)
  end
  return tostring(v)
end

-- ---- cells ----

-- A literal cell: a copy of t that remembers its line.
function M.cell(t)
  current = "cell"
  if type(t) ~= "table" then fail("sweep.cell expects a table of settings, not a %s", type(t)) end
  local c = copy(t)
  lines[c] = select(2, caller())
  return c
end

--[[
The cartesian product of axes. Positional entries are lists of partial cells
({forward = "even", backward = "even"}, ...) so that several keys vary
together; named entries are key = {v1, v2, ...} (a single value is a
one-value axis). Order: the positional axes in order, then the named keys
sorted, the last axis varying fastest.
]]
function M.grid(axes)
  current = "grid"
  if type(axes) ~= "table" then fail("sweep.grid expects a table of axes, not a %s", type(axes)) end
  local line = select(2, caller())
  local list, n = {}, #axes
  for i = 1, n do
    local axis = axes[i]
    if type(axis) ~= "table" or #axis == 0 then
      fail("sweep.grid: positional axis %d must be a non-empty list of partial cells", i)
    end
    check_cells(axis, "sweep.grid axis " .. i)
    list[#list + 1] = axis
  end
  for k in pairs(axes) do
    if type(k) ~= "string" and not (math.type(k) == "integer" and k >= 1 and k <= n) then
      fail("sweep.grid: axis %s is neither a position 1..%d nor a key name", tostring(k), n)
    end
  end
  for _, k in ipairs(keys(axes)) do
    local vals = axes[k]
    if type(vals) ~= "table" then vals = {vals} end
    if #vals == 0 or not is_list(vals) then
      fail("sweep.grid: axis '%s' must be a non-empty list of values", k)
    end
    local parts = {}
    for j = 1, #vals do
      if type(vals[j]) == "table" then
        fail("sweep.grid: axis '%s' value %d is a table; values are strings, numbers or booleans", k, j)
      end
      parts[j] = {[k] = vals[j]}
    end
    list[#list + 1] = parts
  end
  local cells = {{}}
  for a, parts in ipairs(list) do
    local grown = {}
    for _, c in ipairs(cells) do
      for _, p in ipairs(parts) do
        local m = copy(c)
        for k, v in pairs(p) do
          if m[k] ~= nil then fail("sweep.grid: key '%s' is set by two axes (axis %d and an earlier one)", tostring(k), a) end
          m[k] = v
        end
        grown[#grown + 1] = m
      end
    end
    cells = grown
  end
  for _, c in ipairs(cells) do lines[c] = line end
  return cells
end

-- The cells for which keep(cell) is true, in order (each keeps its line).
function M.filter(cells, keep)
  current = "filter"
  check_cells(cells, "sweep.filter's cells")
  if type(keep) ~= "function" then fail("sweep.filter expects a function, not a %s", type(keep)) end
  local out = {}
  for _, c in ipairs(cells) do
    if keep(c) then out[#out + 1] = c end
  end
  return out
end

-- The lists one after another.
function M.concat(...)
  current = "concat"
  local out = {}
  for i = 1, select("#", ...) do
    local l = select(i, ...)
    if type(l) == "table" and #l == 0 and next(l) ~= nil then
      fail("sweep.concat: argument %d is a cell, not a list of cells (wrap it in { })", i)
    end
    check_cells(l, "sweep.concat argument " .. i)
    for _, c in ipairs(l) do out[#out + 1] = c end
  end
  return out
end

-- ---- the paper's names ----

-- Table 1's nine forward-backward-level combinations, in the paper's order.
-- Even-Even has no coefficients, so its level is moot; it runs with batch.
local MODES = {
  "even-even", "even-shake-batch", "shake-keep-batch", "shake-even-batch", "shake-shake-batch",
  "even-shake-image", "shake-keep-image", "shake-even-image", "shake-shake-image",
}

-- The partial cell of a mode name: "shake-even-image" ->
-- {forward = "shake", backward = "even", level = "image"}; "even-even" -> level batch.
function M.mode(name)
  current = "mode"
  if type(name) ~= "string" then fail("sweep.mode expects a name like \"shake-even-image\"") end
  local f, b, l = name:match("^(%a+)%-(%a+)%-?(%a*)$")
  local modes = {even = true, shake = true, keep = true}
  if not f or not modes[f] or not modes[b] or (l ~= "" and l ~= "batch" and l ~= "image")
      or (l == "" and not (f == "even" and b == "even")) then
    fail("sweep.mode: '%s' is not a mode (forward-backward-level, e.g. shake-even-image; "
         .. "even-even alone)", name)
  end
  return {forward = f, backward = b, level = l ~= "" and l or "batch"}
end

M.modes = {}
for i, name in ipairs(MODES) do M.modes[i] = M.mode(name) end

local function cap(s) return (s:gsub("^%l", string.upper)) end

-- "Shake-Even Image"; "Even-Even n/a" (its level does not matter).
function M.mode_name(c)
  local f, b, l = c.forward or "shake", c.backward or "shake", c.level or "image"
  local level = (f == "even" and b == "even") and "n/a" or cap(l)
  return string.format("%s-%s %s", cap(f), cap(b), level)
end

-- The paper's name of a network: "26 2x32d", "29 2x4x64d".
function M.net_name(c)
  if c.arch == "resnext" then
    return string.format("%s 2x%sx%sd", text(c.depth), text(c.groups), text(c.width))
  end
  return string.format("%s 2x%sd", text(c.depth), text(c.width))
end

-- "k=v k=v" of a cell's own settings (its ref left out), sorted by key.
function M.describe(c)
  local parts = {}
  for _, k in ipairs(keys(c)) do
    if k ~= "ref" then parts[#parts + 1] = k .. "=" .. text(c[k]) end
  end
  return table.concat(parts, " ")
end

-- ---- sweep{} ----

local FIELDS = {name = true, title = true, base = true, cells = true, repeats = true,
                reference = true, label = true, layout = true}

--[[
Checks the shape of a sweep and returns it with its defaults filled in:
repeats 1, reference = the cell's ref, label = the cell's settings, layout
row = label and col = "test error %". Values are checked by the engine (C).
]]
function M.sweep(t)
  current = "sweep"
  if type(t) ~= "table" then fail("sweep.sweep expects a table, not a %s", type(t)) end
  local _, line = caller()
  for k in pairs(t) do
    if not FIELDS[k] then
      fail("sweep{}: unknown field '%s' (fields: base, cells, label, layout, name, reference, "
           .. "repeats, title)", tostring(k))
    end
  end
  if type(t.name) ~= "string" or not t.name:match("^[%w_.%-]+$") then
    fail("sweep{}: name must be a string of letters, digits, '_', '.' and '-' (it names the sweep "
         .. "in the results store), not %s", type(t.name) == "string" and ("'" .. t.name .. "'") or type(t.name))
  end
  if t.title ~= nil and type(t.title) ~= "string" then fail("sweep{}: title must be a string") end
  if t.base ~= nil and type(t.base) ~= "table" then fail("sweep{}: base must be a table of key = value settings") end
  if t.cells == nil then fail("sweep{}: no cells (cells = a list of tables of settings, e.g. sweep.grid{...})") end
  check_cells(t.cells, "cells")
  if #t.cells == 0 then fail("sweep{}: no cells (the list is empty)") end
  local repeats = t.repeats
  if repeats == nil then repeats = 1 end
  if type(repeats) == "number" then
    local n = math.tointeger(repeats)
    if not n or n < 1 then
      fail("sweep{}: repeats must be a positive integer or a function(cell), not %s", tostring(repeats))
    end
    repeats = function() return n end
  elseif type(repeats) ~= "function" then
    fail("sweep{}: repeats must be a positive integer or a function(cell), not a %s", type(repeats))
  end
  for _, f in ipairs({"reference", "label"}) do
    if t[f] ~= nil and type(t[f]) ~= "function" then fail("sweep{}: %s must be a function(cell)", f) end
  end
  local layout = t.layout or {}
  if type(layout) ~= "table" then fail("sweep{}: layout must be a table {row = function(cell), col = function(cell)}") end
  for k, v in pairs(layout) do
    if k ~= "row" and k ~= "col" then fail("sweep{}: layout has an unknown field '%s' (row, col)", tostring(k)) end
    if type(v) ~= "function" then fail("sweep{}: layout.%s must be a function(cell)", k) end
  end

  local label = t.label or function(c)
    local s = M.describe(c)
    return s ~= "" and s or t.name
  end
  local cells = {}
  for i, c in ipairs(t.cells) do cells[i] = {cell = c, line = lines[c] or line} end
  local s = {
    name = t.name, title = t.title or "", line = line, base = t.base or {}, cells = cells,
    repeats = repeats,
    reference = t.reference or function(c) return rawget(c, "ref") end,
    label = label,
    row = layout.row or function(c) return label(c) end,
    col = layout.col or function() return "test error %" end,
  }
  made[s] = true
  return s
end

-- What C reads: the normalized record of the sweep file's result.
function host.prepare(t)
  if made[t] then return t end
  from_host = true
  return M.sweep(t)
end

-- The module is a read-only view of M whose lookups note the file's line
-- (cheap: one stack walk per `sweep.NAME` the file evaluates).
return setmetatable({}, {
  __index = function(_, k)
    local src, line = caller()
    if src then access[k] = {src, line} end
    return M[k]
  end,
  __newindex = function(_, k)
    fail("the sweep library is read-only (assigning sweep.%s)", tostring(k))
  end,
  __pairs = function() return next, M, nil end,
  __metatable = "sweep",
})
