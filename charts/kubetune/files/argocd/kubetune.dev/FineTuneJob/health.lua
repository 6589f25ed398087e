-- Argo CD health check for kubetune.dev/FineTuneJob.
--
-- Health comes from one condition, Ready (True only once the adapter exists), and from
-- status.observedGeneration; status.phase (a closed set) only says which kind of "not ready" it is.
-- Other conditions never decide health, so a condition added by a later operator cannot leave the
-- job stuck in Progressing. Messages are the operator's own one-line status.message.
--
-- Runs on Lua 5.1 / gopher-lua with only the base and table libraries (what Argo CD gives scripts
-- from argocd-cm): no string or math functions, and nil-safe on every field.

local function condition(status, condType)
  if status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == condType then
      return c
    end
  end
  return nil
end

local function withReason(cond, fallback)
  local reason = nil
  local message = fallback
  if cond ~= nil then
    reason = cond.reason
    if cond.message ~= nil and cond.message ~= "" then
      message = cond.message
    end
  end
  if message == nil or message == "" then
    message = "no message from the operator"
  end
  if reason ~= nil and reason ~= "" then
    return reason .. ": " .. message
  end
  return message
end

local hs = {}
local status = obj.status
if status == nil or (status.phase == nil and status.conditions == nil) then
  hs.status = "Progressing"
  hs.message = "Waiting for the kubetune operator to report status"
  return hs
end

local generation = nil
if obj.metadata ~= nil then
  generation = obj.metadata.generation
end
if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. generation
  return hs
end

local phase = status.phase
local ready = condition(status, "Ready")
local isReady = false
if ready ~= nil then
  isReady = ready.status == "True"
else
  isReady = phase == "Succeeded"
end

if isReady then
  hs.status = "Healthy"
  hs.message = status.message or "training succeeded"
  return hs
end

if phase == "Failed" then
  hs.status = "Degraded"
  hs.message = withReason(ready, status.message)
  return hs
end

-- Cancelled (a child Job was deleted mid-run) is Degraded, not Suspended: it is terminal, and a
-- sync wave must not go on to deploy an adapter that will never exist.
if phase == "Cancelled" then
  hs.status = "Degraded"
  hs.message = "Cancelled: " .. withReason(ready, status.message)
  return hs
end

if phase == "Suspended" then
  hs.status = "Suspended"
  hs.message = status.message or "spec.suspend is true"
  return hs
end

-- Pending, ValidatingData, Running, and any phase a newer operator may add.
hs.status = "Progressing"
if phase ~= nil and status.message ~= nil and status.message ~= "" then
  hs.message = phase .. ": " .. status.message
elseif phase ~= nil then
  hs.message = phase
else
  hs.message = status.message or "Waiting for the kubetune operator to report status"
end
return hs
