-- Suspend a FineTuneJob: spec.suspend=true. The operator suspends its batch/v1 Job, which removes
-- the training pods until resume. A finished job cannot be suspended.
local phase = nil
if obj.status ~= nil then
  phase = obj.status.phase
end
if phase == "Succeeded" or phase == "Failed" or phase == "Cancelled" then
  error("FineTuneJob " .. obj.metadata.name .. " is " .. phase .. ": a finished job cannot be suspended", 0)
end
if obj.spec == nil then
  obj.spec = {}
end
obj.spec.suspend = true
return obj
