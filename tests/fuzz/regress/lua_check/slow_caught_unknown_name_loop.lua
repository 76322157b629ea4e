while true do pcall(function() while tre do end end) end
