-- Resource actions offered for an AdapterDeployment:
--   retrain-now  annotate kubetune.dev/retrain-requested=<now>; the operator starts one retraining
--                FineTuneJob (see integrations/argocd/README.md for the contract). Offered when an
--                adapter serves, a retraining recipe exists (retraining.template or
--                adapter.fineTuneJobRef), and no retrain or earlier request is still in flight.
--   rollback     pin spec.adapter.version to the version deployed before the active one
--                (status.history, newest last). Offered with two or more history entries.
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

local function rollbackTarget(obj)
  local status = obj.status
  if status == nil or status.history == nil then
    return nil
  end
  local history = status.history
  local n = table.getn(history)
  if n < 2 then
    return nil
  end
  local index = n
  if status.activeAdapter ~= nil and status.activeAdapter.version ~= nil then
    for i = n, 1, -1 do
      if history[i].version == status.activeAdapter.version then
        index = i
        break
      end
    end
  end
  if index < 2 then
    return nil
  end
  return history[index - 1].version
end

local actions = {}
actions["retrain-now"] = {
  ["disabled"] = retrainBlocker(obj) ~= nil,
  ["displayName"] = "Retrain now",
  ["iconClass"] = "fa fa-fw fa-redo"
}
local target = rollbackTarget(obj)
local pinned = nil
if obj.spec ~= nil and obj.spec.adapter ~= nil then
  pinned = obj.spec.adapter.version
end
local rollback = {["disabled"] = target == nil or target == pinned, ["iconClass"] = "fa fa-fw fa-undo"}
if target ~= nil then
  rollback["displayName"] = "Roll back to " .. target
end
actions["rollback"] = rollback
return actions
