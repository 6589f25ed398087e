-- Resource actions offered for a FineTuneJob: suspend and resume (spec.suspend), never on a job that
-- has finished (Succeeded, Failed, Cancelled are terminal: the operator never trains it again).
local actions = {}
actions["suspend"] = {["disabled"] = true, ["iconClass"] = "fa fa-fw fa-pause"}
actions["resume"] = {["disabled"] = true, ["iconClass"] = "fa fa-fw fa-play"}

local phase = nil
if obj.status ~= nil then
  phase = obj.status.phase
end
local terminal = phase == "Succeeded" or phase == "Failed" or phase == "Cancelled"
local suspended = obj.spec ~= nil and obj.spec.suspend == true

if not terminal then
  actions["suspend"]["disabled"] = suspended
  actions["resume"]["disabled"] = not suspended
end
return actions
