-- Ask the operator for one retraining run now: annotation kubetune.dev/retrain-requested=<UTC time>.
-- The operator handles each distinct value once (it records it in status.lastRetrainRequest): it
-- starts one retraining FineTuneJob without waiting for a drift/accuracy trigger or the cooldown,
-- within the daily budget (retraining.maxPerDay) and with retraining.approval as configured.
-- Refused under the same conditions for which discovery.lua disables the button.
local os = require("os")

local function retrainBlocker(obj)
  local spec = obj.spec or {}
  local status = obj.status or {}
  if status.activeAdapter == nil or status.activeAdapter.version == nil then
    return "no adapter is serving yet"
  end
  local hasRecipe = spec.adapter ~= nil and spec.adapter.fineTuneJobRef ~= nil
  if spec.retraining ~= nil and spec.retraining.template ~= nil then
    hasRecipe = true
  end
  if not hasRecipe then
    return "no retraining recipe (set retraining.template or adapter.fineTuneJobRef)"
  end
  if status.retrains ~= nil then
    for _, record in ipairs(status.retrains) do
      if record.outcome == nil or record.outcome == "Pending" or record.outcome == "Running" then
        return "retraining FineTuneJob " .. (record.fineTuneJob or "?") .. " is still running"
      end
    end
  end
  local requested = nil
  if obj.metadata ~= nil and obj.metadata.annotations ~= nil then
    requested = obj.metadata.annotations["kubetune.dev/retrain-requested"]
  end
  if requested ~= nil and requested ~= status.lastRetrainRequest then
    return "a retrain requested at " .. requested .. " is not handled yet"
  end
  return nil
end

local blocker = retrainBlocker(obj)
if blocker ~= nil then
  error("AdapterDeployment " .. obj.metadata.name .. ": cannot retrain now: " .. blocker, 0)
end
if obj.metadata.annotations == nil then
  obj.metadata.annotations = {}
end
obj.metadata.annotations["kubetune.dev/retrain-requested"] = os.date("!%Y-%m-%dT%H:%M:%SZ")
return obj
