-- Runs an Argo CD health script the way Argo CD does (tests/argocd_health.py):
--   lua5.4 tests/argocd_harness.lua <health.lua> < object-as-a-lua-table-constructor
-- Argo CD's gopher-lua gives the script the global `obj` and only the base, table and a safe os library;
-- strings have no methods there. Prints hs.status, a NUL byte, hs.message.
local script, literal = arg[1], io.read("a")
local object = assert(load("return " .. literal, "=object", "t", {}))()
local env = {
  obj = object, assert = assert, error = error, ipairs = ipairs, next = next, pairs = pairs, pcall = pcall,
  select = select, tonumber = tonumber, tostring = tostring, type = type, unpack = table.unpack,
  table = {concat = table.concat, insert = table.insert, remove = table.remove, sort = table.sort},
  os = {clock = os.clock, date = os.date, difftime = os.difftime, time = os.time},
}
local chunk = assert(loadfile(script, "t", env))
local write = io.write
debug.setmetatable("", nil)
local hs = chunk()
assert(type(hs) == "table", "the health script must return a table, got " .. type(hs))
write(tostring(hs.status), "\0", tostring(hs.message))
