-- Argo CD health check for kubetune.io/v1alpha1 FineTuneJob (docs/gitops.md).
-- Argo CD runs it with gopher-lua (Lua 5.1) and opens only the base, table and os libraries: no string or
-- math functions, no string methods. JSON numbers arrive as Lua numbers.
local hs = {}

local function condition(status, type_)
  if status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == type_ then
      return c
    end
  end
  return nil
end

local function nonempty(text)
  return text ~= nil and text ~= ""
end

-- Reason and message of the failure, or of the Failed condition when status.failure is absent.
local function failure_message(status)
  local source = status.failure
  if source == nil then
    source = condition(status, "Failed")
  end
  if source == nil then
    return "the FineTuneJob failed"
  end
  if nonempty(source.reason) and nonempty(source.message) then
    return source.reason .. ": " .. source.message
  end
  if nonempty(source.message) then
    return source.message
  end
  if nonempty(source.reason) then
    return source.reason
  end
  return "the FineTuneJob failed"
end

-- The Running condition's message (pods running, the scheduler's reason) and the trainer's step count.
local function progress_message(status)
  local parts = {}
  local running = condition(status, "Running")
  if running ~= nil and nonempty(running.message) then
    table.insert(parts, running.message)
  end
  local progress = status.progress
  if progress ~= nil and progress.totalSteps ~= nil then
    local steps = "step " .. tostring(progress.step or 0) .. "/" .. tostring(progress.totalSteps)
    if nonempty(progress.percent) then
      steps = steps .. " (" .. progress.percent .. ")"
    end
    table.insert(parts, steps)
  end
  if #parts == 0 then
    return "phase " .. tostring(status.phase)
  end
  return table.concat(parts, "; ")
end

local status = obj.status
if status == nil or status.phase == nil or status.phase == "" then
  hs.status = "Progressing"
  hs.message = "waiting for the operator"
  return hs
end

-- Succeeded and Failed are final: the operator writes no status after them, not even observedGeneration.
if status.phase == "Succeeded" then
  hs.status = "Healthy"
  if status.output ~= nil and nonempty(status.output.uri) then
    hs.message = "training succeeded; output " .. status.output.uri
  else
    hs.message = "training succeeded"
  end
  return hs
end
if status.phase == "Failed" then
  hs.status = "Degraded"
  hs.message = failure_message(status)
  return hs
end

-- A spec change (suspend, resume, resize) the operator has not acted on yet.
local generation = obj.metadata and obj.metadata.generation
if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "waiting for the operator to observe generation " .. tostring(generation)
  return hs
end

if status.phase == "Suspended" then
  hs.status = "Suspended"
  local suspended = condition(status, "Suspended")
  if suspended ~= nil and nonempty(suspended.message) then
    hs.message = suspended.message
  else
    hs.message = "suspended"
  end
  return hs
end

-- Pending, Running, and any phase a newer operator may add: the job is on its way.
hs.status = "Progressing"
hs.message = progress_message(status)
return hs
