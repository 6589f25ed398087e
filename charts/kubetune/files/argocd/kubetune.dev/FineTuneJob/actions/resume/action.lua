-- Resume a FineTuneJob: spec.suspend=false (also approves a retraining job created suspended by
-- retraining.approval=manual). A finished job cannot be resumed.
local phase = nil
if obj.status ~= nil then
  phase = obj.status.phase
end
if phase == "Succeeded" or phase == "Failed" or phase == "Cancelled" then
  error("FineTuneJob " .. obj.metadata.name .. " is " .. phase .. ": a finished job cannot be resumed", 0)
end
if obj.spec == nil then
  obj.spec = {}
end
obj.spec.suspend = false
return obj
