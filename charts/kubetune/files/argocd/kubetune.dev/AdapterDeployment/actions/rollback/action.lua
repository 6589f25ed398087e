-- Roll back: pin spec.adapter.version to the version deployed before the active one (status.history
-- is ordered by rollout, newest last). The pin stays until removed from the spec (in Git, or
-- kubectl patch ... '{"spec":{"adapter":{"version":null}}}'); pressing rollback again goes back to
-- the version before that in history order, i.e. the one just replaced.
local status = obj.status or {}
local history = status.history or {}
local n = table.getn(history)
if n < 2 then
  error("AdapterDeployment " .. obj.metadata.name .. ": status.history has " .. n ..
    " version(s); rollback needs at least 2", 0)
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
  error("AdapterDeployment " .. obj.metadata.name .. ": the active version " ..
    status.activeAdapter.version .. " is the oldest in status.history", 0)
end
obj.spec.adapter.version = history[index - 1].version
return obj
