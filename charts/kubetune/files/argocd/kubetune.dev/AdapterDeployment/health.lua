-- Argo CD health check for kubetune.dev/AdapterDeployment.
--
-- Health comes from one condition, Ready (True when the active adapter serves on every wanted pod),
-- and from status.observedGeneration; status.phase only says which kind of "not ready" it is. The
-- other conditions read: RolledBack True means the newest rollout was rolled back, which the app must
-- show even though the previous version still serves; AdapterResolved False names why a Degraded
-- adapter cannot be served (RuntimeCannotServe). A retrain in progress (condition
-- Retraining) never changes health: the champion keeps serving; it is only named in the message.
-- The message names the serving engine when it is not kubetune's own (spec.runtime.engine vllm).
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

-- Four decimals without string.format: gopher-lua and Lua 5.1 print a short float the same way.
local function round4(x)
  local scaled = x * 10000 + 0.5
  return (scaled - scaled % 1) / 10000
end

local function servingMessage(status, spec)
  local active = status.activeAdapter
  if active == nil or active.version == nil then
    return status.message or "serving"
  end
  local text = "serving " .. active.version
  if type(active.accuracy) == "number" then
    text = text .. " (accuracy " .. round4(active.accuracy) .. ")"
  end
  local wanted = nil
  if spec ~= nil then
    wanted = spec.replicas
  end
  if wanted ~= nil then
    text = text .. " on " .. (status.readyReplicas or 0) .. "/" .. wanted .. " pods"
  end
  local autoscaling = nil
  if spec ~= nil then
    autoscaling = spec.autoscaling
  end
  if autoscaling ~= nil and autoscaling.maxReplicas ~= nil then
    text = text .. " (autoscaled " .. (autoscaling.minReplicas or 1) .. "-" .. autoscaling.maxReplicas .. ")"
  end
  -- The serving engine, named when it is not kubetune's own server (spec.runtime.engine's default).
  local runtime = nil
  if spec ~= nil then
    runtime = spec.runtime
  end
  if runtime ~= nil and runtime.engine ~= nil and runtime.engine ~= "kubetune" then
    text = text .. ", runtime " .. runtime.engine
  end
  return text
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

local rolledBack = condition(status, "RolledBack")
if rolledBack ~= nil and rolledBack.status == "True" then
  hs.status = "Degraded"
  hs.message = withReason(rolledBack, "the newest rollout was rolled back")
  if status.activeAdapter ~= nil and status.activeAdapter.version ~= nil then
    hs.message = hs.message .. "; still serving " .. status.activeAdapter.version
  end
  return hs
end

local phase = status.phase
local ready = condition(status, "Ready")
local isReady = false
if ready ~= nil then
  isReady = ready.status == "True"
else
  isReady = phase == "Available"
end

if isReady then
  hs.status = "Healthy"
  hs.message = servingMessage(status, obj.spec)
  local retraining = condition(status, "Retraining")
  if retraining ~= nil and retraining.status == "True" and retraining.message ~= nil then
    hs.message = hs.message .. "; retraining: " .. retraining.message
  end
  -- An autoscaler that cannot be applied (KEDA asked for but not installed) leaves the pods at
  -- spec.replicas: still serving, so Healthy, but named.
  local autoscaler = condition(status, "AutoscalerReady")
  if autoscaler ~= nil and autoscaler.status == "False" then
    hs.message = hs.message .. "; autoscaler: " .. withReason(autoscaler, "not applied")
  end
  return hs
end

if phase == "Degraded" then
  hs.status = "Degraded"
  -- An adapter the runtime cannot serve (AdapterResolved False, reason RuntimeCannotServe: a LoRA
  -- rank above runtime.maxLoraRank, answer heads on vllm) is named by its own reason.
  local resolved = condition(status, "AdapterResolved")
  if resolved ~= nil and resolved.status == "False" then
    hs.message = withReason(resolved, status.message)
  else
    hs.message = withReason(ready, status.message)
  end
  return hs
end

-- Pending (adapter not resolved yet), Progressing (rollout or canary), and any newer phase.
hs.status = "Progressing"
if phase ~= nil and status.message ~= nil and status.message ~= "" then
  hs.message = phase .. ": " .. status.message
elseif phase ~= nil then
  hs.message = phase
else
  hs.message = status.message or "Waiting for the kubetune operator to report status"
end
return hs
